"""Checking a request before any weights load: presets and ``--set`` values, device and dtype, the model, size
rules, the pipeline's inputs, and (for ``sparse-vdit``) that a calibration plan exists for it.

Every check here is cheap: a bad request fails with a message that says what to fix before a model is built,
loaded or downloaded. The result is a :class:`Request` that the runner (``accel.cli.runner``) carries out.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import EXIT_FAILURE, PROG, CLIError
from .models import ModelSource, default_model, resolve_model
from .parser import DTYPES

FALLBACK_FPS = 16


# ------------------------------------------------------------------------------------------------------- request


@dataclass
class Request:
    """Everything checked and resolved before the model is built or loaded."""

    source: ModelSource
    device: str
    dtype: Any  # torch.dtype
    cpu_offload: bool
    overrides: dict[str, Any]  # all --set values, converted to their fields' types
    overrides_by_preset: dict[str, dict[str, Any]]  # the --set values each preset takes
    is_video: bool
    height: int | None
    width: int | None
    frames: int | None
    steps: int | None
    guidance_scale: float | None
    negative_prompt: str | None
    seed: int
    fps: float
    image: str | None
    call_params: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    output_type: str = "np"  # "np": decoded frames in [0, 1]; "latent": the denoiser's output, no VAE decode
    call_extra: dict[str, Any] = field(default_factory=dict)  # further pipeline keyword arguments
    compile: bool = False  # torch.compile the denoiser(s) after accelerate (runner.compile_denoisers)
    ulysses: int = 1  # Ulysses context-parallel degree: one torchrun process per rank (runner.parallelize)

    def call_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the pipeline call (besides prompt, generator and callbacks)."""
        kw: dict[str, Any] = {"output_type": self.output_type}
        if self.negative_prompt is not None:
            kw["negative_prompt"] = self.negative_prompt
        for key, value in (
            ("height", self.height),
            ("width", self.width),
            ("num_frames", self.frames),
            ("num_inference_steps", self.steps),
            ("guidance_scale", self.guidance_scale),
        ):
            if value is not None:
                kw[key] = value
        if self.image is not None:
            from PIL import Image

            kw["image"] = Image.open(self.image).convert("RGB")
        kw.update(self.call_extra)
        return kw

    def size_text(self, frames_shape: tuple[int, ...] | None = None) -> str:
        if frames_shape is not None and self.output_type != "latent":
            f, h, w = frames_shape[:3]
            return f"{f} frame{'s' if f != 1 else ''} {w}x{h}" if self.is_video else f"image {w}x{h}"
        hw = f"{self.width}x{self.height}" if self.height and self.width else "pipeline-default size"
        return f"{self.frames} frames {hw}" if self.is_video and self.frames else hw

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)


def dtype_name(dtype) -> str:
    """'bfloat16' for torch.bfloat16."""
    return str(dtype).replace("torch.", "")


# ------------------------------------------------------------------------------------------- presets and --set


def check_preset_name(preset: str) -> None:
    """Raise CLIError unless every '+' part of ``preset`` is a preset; the message lists them."""
    import accel

    names = list(accel.list_presets())
    for part in (p.strip() for p in preset.split("+")):
        if part in names:
            continue
        close = difflib.get_close_matches(part, names, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise CLIError(
            f"unknown preset {part!r}{hint}; available presets: {', '.join(names)} (combine an attention method and "
            f"a cache with '+', e.g. radial+taylorseer; `{PROG} presets` describes them)"
        )


def _resolve(preset: str, overrides: dict[str, Any]):
    from accel.config import resolve_config

    return resolve_config(preset, dict(overrides))


def _parts(config) -> list[Any]:
    return [p for p in (config.attention, config.cache) if p is not None]


def field_types(config) -> dict[str, Any]:
    """Parameter name -> type annotation over the config's parts (attention method and cache)."""
    out: dict[str, Any] = {}
    for part in _parts(config):
        hints = typing.get_type_hints(type(part))
        for f in dataclasses.fields(part):
            out.setdefault(f.name, hints.get(f.name, Any))
    return out


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _convert(text: str, hint) -> Any:
    """``text`` as a value of type ``hint``; ValueError(what was expected) otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        nullable = len(options) < len(args)
        if nullable and text.lower() in ("none", "null"):
            return None
        wanted = []
        for option in options:
            try:
                return _convert(text, option)
            except ValueError as e:
                wanted.append(str(e))
        what = " or ".join(wanted)
        raise ValueError(f"{what} (or none: the model's default)" if nullable else what)
    text = _unquote(text.strip())
    if hint is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError("true or false")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("a whole number") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("a number") from None
    if hint is str:
        return text
    if origin is tuple:
        items = [t for t in text.strip("()[] ").replace("x", ",").split(",") if t.strip()]
        variadic = len(args) == 2 and args[1] is Ellipsis
        kinds = [args[0]] * len(items) if variadic else list(args)
        count = "" if variadic else {2: "two ", 3: "three "}.get(len(args), f"{len(args)} ")
        what = f"{count}whole numbers separated by commas, e.g. {'0,1' if variadic else '8,16'}"
        if not items or len(items) != len(kinds) or not all(k is int for k in kinds):
            raise ValueError(what)
        try:
            return tuple(int(t) for t in items)
        except ValueError:
            raise ValueError(what) from None
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def convert_overrides(preset: str, config, overrides: dict[str, Any]) -> dict[str, Any]:
    """``--set`` values (text) converted to the types of ``config``'s fields; values that are not text pass as
    they are. Unknown names and unconvertible values are a CLIError naming the flag."""
    types_ = field_types(config)
    out = {}
    for key, value in overrides.items():
        if key not in types_:
            valid = sorted(types_)
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CLIError(
                f"--set {key}={value}: unknown parameter {key!r} for preset {preset!r}{hint}; valid parameters: "
                f"{', '.join(valid) if valid else 'none (the preset has no parameters)'}"
            )
        if not isinstance(value, str):
            out[key] = value
            continue
        try:
            out[key] = _convert(value, types_[key])
        except ValueError as e:
            raise CLIError(f"--set {key}={value}: {key} must be {e}") from None
    return out


def check_preset(preset: str, overrides: dict[str, Any]):
    """Resolve a preset name (with '+' compositions) and its ``--set`` values; returns ``(config, values)`` with
    the values converted to their fields' types, or raises CLIError."""
    check_preset_name(preset)
    try:
        base = _resolve(preset, {})
    except (ValueError, TypeError) as e:  # e.g. two attention methods composed
        raise CLIError(str(e)) from None
    values = convert_overrides(preset, base, overrides)
    try:
        return _resolve(preset, values), values
    except (ValueError, TypeError) as e:
        culprits = []
        for key in values:
            try:
                _resolve(preset, {key: values[key]})
            except (ValueError, TypeError):
                culprits.append(key)
        shown = " ".join(f"{k}={overrides[k]}" for k in (culprits or values))
        raise CLIError(f"--set {shown}: {e}") from None


def preset_overrides(presets: list[str], overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The --set values for each preset. One preset takes them all (unknown keys are an error); with several
    (bench), each preset takes the keys its configs have, and a key no preset has is an error."""
    if len(presets) == 1 or not overrides:
        return {p: dict(overrides) for p in presets}
    for p in presets:
        check_preset_name(p)
    fields = {p: set(field_types(_resolve(p, {}))) for p in presets}
    unused = [k for k in overrides if not any(k in f for f in fields.values())]
    if unused:
        valid = sorted(set().union(*fields.values()))
        raise CLIError(f"--set {', '.join(unused)}: no preset in {presets} has such a parameter; valid: {valid}")
    return {p: {k: v for k, v in overrides.items() if k in fields[p]} for p in presets}


def is_dense(config) -> bool:
    return config.attention is None and config.cache is None


# ---------------------------------------------------------------------------------------------- device, dtype


def resolve_device(text: str) -> str:
    import torch

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device {text!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {text}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise CLIError(f"--device {text}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise CLIError(f"--device {text!r}: unsupported device type; use cpu, cuda, cuda:N or mps")
    return str(dev)


def resolve_dtype(text: str, device: str):
    """The torch dtype for a ``--dtype`` name (``auto``: bfloat16 on CUDA where supported, else float32)."""
    import torch

    if text not in DTYPES:
        raise CLIError(f"--dtype {text!r}: use one of {', '.join(DTYPES)}")
    name = DTYPES[text]
    if name is None:
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, name)


# -------------------------------------------------------------------------------------------------- sizes


def _check_multiple(flag: str, value: int | None, multiple: int, family: str) -> None:
    if value is None or multiple <= 1 or value % multiple == 0:
        return
    lo = value // multiple * multiple
    options = f"{lo} or {lo + multiple}" if lo > 0 else f"{multiple}"
    raise CLIError(f"{flag} {value} is not a multiple of {multiple}, which {family} models need: use {options}")


def token_grid(spec, is_video: bool, frames: int | None, height: int | None, width: int | None):
    """The self-attention ``TokenLayout`` of a request in pixels and frames (from the size rules: a ModelSpec or
    an embedded model's ``SizeRules``, i.e. ``ModelSource.size_rules``), or None when it cannot be known before
    the model runs (sizes left to the pipeline, text tokens in self-attention)."""
    if spec is None or height is None or width is None or spec.text_pos != "none":
        return None
    if is_video and frames is None:
        return None
    return spec.token_grid(frames if is_video else 1, height, width)


def grid_text(layout, steps: int | None) -> str:
    return f"{layout.frames}x{layout.height}x{layout.width} latent tokens, {steps} steps"


def runs_all_dense(attention, steps: int | None, layout, num_layers: int | None) -> bool:
    """True when a resolved attention config (or None) makes no sparse call at all for this request: the methods'
    own rules (:func:`accel.methods.base.never_sparse`)."""
    if attention is None:
        return True
    from accel.methods.base import never_sparse

    return never_sparse(attention, steps, layout, num_layers)


# ------------------------------------------------------------------------------------------- calibration plans


def _calibrate_command(source: ModelSource, request_flags: list[str], overrides: dict[str, Any]) -> str:
    words = [PROG, "calibrate"]
    if source.name != default_model():
        words += ["--model", source.location]
    words += request_flags
    for key, value in overrides.items():
        if key != "plan":
            words += ["--set", f"{key}={value}"]
    return " ".join(words)


def check_plan(
    source: ModelSource,
    config,
    overrides: dict[str, Any],
    *,
    is_video: bool,
    height: int | None,
    width: int | None,
    frames: int | None,
    steps: int | None,
) -> None:
    """For a sparse-vdit config: raise CLIError (exit status 1) unless a calibration plan for this model, token
    grid and step count exists (``--set plan=PATH`` or the plan directory), before any weights load.

    The plan key needs the transformers' architecture keys (spec, class, config hash): they come from the
    transformers built on the meta device from their configs (no weights). Where the configs cannot be read, at
    least some plan for this token grid and step count must exist. Nothing is checked when no sparse call will
    happen (every step or layer dense, a short sequence) or when the sizes are left to the pipeline."""
    from accel.errors import PlanError
    from accel.methods import sparse_vdit as sv

    spec = source.spec
    if spec is None or steps is None:
        return
    layout = token_grid(source.size_rules, is_video, frames, height, width)
    skeletons = source.transformer_skeletons()
    models = {name: spec.architecture_key(m) for name, m in skeletons.items()} if skeletons else None
    attention = config.attention
    defaults, layers = {}, None
    if skeletons:
        holder = types.SimpleNamespace(**{a: skeletons.get(a) for a in spec.transformer_attrs})
        try:
            defaults = spec.defaults(holder).get(attention.method, {})
        except Exception:  # defaults that need more of the pipeline than its transformers: the generic ones
            defaults = {}
        layers = min(len(spec.self_attention_layers(m)) for m in skeletons.values())
    attention = attention.with_defaults(defaults)
    if runs_all_dense(attention, steps, layout, layers):
        return
    flags = []
    for flag, value in (("--height", height), ("--width", width), ("--frames", frames), ("--steps", steps)):
        if value is not None:
            flags += [flag, str(value)]
    how = (
        f"calibrate one first: `{_calibrate_command(source, flags, overrides)}` (the same model, sizes, steps and "
        "--set values as this render), or pass a plan file with --set plan=PATH"
    )
    what = grid_text(layout, steps) if layout is not None else f"{steps} steps"

    if attention.plan is not None:
        path = Path(attention.plan).expanduser()
        if not path.is_file():
            raise CLIError(
                f"--set plan={attention.plan}: no such plan file; create it with "
                f"`{_calibrate_command(source, flags, overrides)} -o {attention.plan}`",
                code=EXIT_FAILURE,
            )
        try:
            plan = sv.Plan.load(path)
            if models is not None:
                plan.check_models(models, repr(str(path)))
                if layout is not None:
                    plan.check(models, layout, steps, repr(str(path)))
        except PlanError as e:
            raise CLIError(f"--set plan={attention.plan}: {_cli_spelling(str(e))}", code=EXIT_FAILURE) from None
        return

    folder = sv.plan_dir()
    if models is not None and layout is not None:
        path = folder / sv.plan_filename(models, layout, steps)
        if path.is_file():
            try:
                sv.Plan.load(path).check(models, layout, steps, repr(str(path)))
            except PlanError as e:
                raise CLIError(_cli_spelling(str(e)), code=EXIT_FAILURE) from None
            return
        first = models[sorted(models)[0]]
        others = sorted(p.name for p in folder.glob(f"{first['spec']}-{first['config_sha1']}-*.json"))
        known = f"; this model's plans there: {', '.join(others)}" if others else ""
        raise CLIError(
            f"no Sparse-vDiT plan for this model at {what} (looked for {str(path)!r}{known}); {how}",
            code=EXIT_FAILURE,
        )
    # The exact key is unknown here: at least one plan for this grid and step count must exist.
    grid = f"{layout.frames}x{layout.height}x{layout.width}" if layout is not None else "*"
    if not any(folder.glob(f"*-{grid}-{steps}steps.json")) and not any(folder.glob(f"*-{grid}-*-{steps}steps.json")):
        raise CLIError(f"no Sparse-vDiT plan at {what} in {str(folder)!r}; {how}", code=EXIT_FAILURE)


def _cli_spelling(message: str) -> str:
    """A core message in the command line's words: ``plan=PATH`` is ``--set plan=PATH`` here."""
    return message.replace("pass plan=PATH", "pass --set plan=PATH")


# ----------------------------------------------------------------------------------------------- the request


def default_preset(spec) -> str:
    """The preset used when none is given: radial, or draft on models radial does not apply to (images)."""
    import accel

    return "radial" if spec is None or "radial" in accel.supported_presets(spec) else "draft"


def with_default_preset(args: argparse.Namespace, attr: str) -> None:
    """Fill ``args.<attr>`` (``preset`` or ``presets``) with :func:`default_preset` of the model when not given; the
    model is resolved once here and handed on as ``args.model``."""
    if getattr(args, attr) is not None:
        return
    source = args.model if isinstance(args.model, ModelSource) else resolve_model(args.model)
    args.model = source
    preset = default_preset(source.spec)
    setattr(args, attr, preset if attr == "preset" else [preset])


def build_request(
    model: str | ModelSource,
    presets: list[str],
    *,
    overrides: dict[str, Any] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    cpu_offload: bool = False,
    height: int | None = None,
    width: int | None = None,
    frames: int | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    negative_prompt: str | None = None,
    seed: int = 0,
    fps: float | None = None,
    image: str | None = None,
    output_type: str = "np",
    call_extra: dict[str, Any] | None = None,
    compile: bool = False,
    ulysses: int = 1,
    check_plans: bool = True,
    before_load=None,
) -> tuple[Request, dict[str, Any]]:
    """Check presets, model, device, sizes before anything heavy; returns the request and preset -> config.

    ``model``: a ``--model`` value or an already resolved :class:`ModelSource`. ``overrides``: ``--set`` values
    (text is converted to each field's type). ``before_load(is_video, frames)`` runs once the output shape is
    known, before the pipeline class is imported. ``check_plans``: require a Sparse-vDiT plan for a sparse-vdit
    preset (calibration, which writes one, does not).
    """
    check_ulysses(ulysses, cpu_offload)
    overrides = dict(overrides or {})
    by_preset = preset_overrides(presets, overrides)
    configs = {}
    for p in presets:
        configs[p], by_preset[p] = check_preset(p, by_preset[p])
    typed = {k: v for values in by_preset.values() for k, v in values.items()}
    device = resolve_device(device)
    if cpu_offload:
        import importlib.util

        if not device.startswith("cuda"):
            raise CLIError("--cpu-offload moves components to a CUDA GPU while they run; it needs --device cuda")
        if importlib.util.find_spec("accelerate") is None:
            raise CLIError("--cpu-offload needs the `accelerate` package: pip install accelerate")
    torch_dtype = resolve_dtype(dtype, device)
    if image is not None and not Path(image).is_file():
        raise CLIError(f"--image {image!r}: no such file")

    source = model if isinstance(model, ModelSource) else resolve_model(model)
    spec = source.spec
    for preset, config in configs.items():
        if not is_dense(config) and spec is None:
            from accel.pipelines import supported_models_text

            transformer = ", ".join(source.transformer_classes) or "no transformer"
            raise CLIError(
                f"preset {preset!r} cannot accelerate {source.pipeline_class} ({transformer}) yet; supported "
                f"models: {supported_models_text()}. Render it without acceleration with --preset dense"
            )

    if spec is not None:
        from accel.methods import method_class

        for preset, config in configs.items():
            reason = None if config.attention is None else method_class(config.attention).unsupported(spec)
            if reason is not None:
                raise CLIError(f"preset {preset!r} cannot apply to {spec.name} models: {reason}")

    is_video = source.is_video
    emb = source.embedded
    # Defaults: the embedded model's, else the pipeline's __call__ defaults (imports diffusers; hub/local only).
    params = None if emb is not None else source.call_parameters()

    def pick(value, emb_attr: str, param: str):
        if value is not None:
            return value
        if emb is not None:
            return getattr(emb, emb_attr)
        if params is not None:
            d = params.get(param)
            return d if isinstance(d, (int, float)) and not isinstance(d, bool) else None
        return None

    given = {"height": height, "width": width, "frames": frames, "guidance_scale": guidance_scale}
    height = pick(height, "height", "height")
    width = pick(width, "width", "width")
    frames = pick(frames, "frames", "num_frames") if is_video else None
    steps = pick(steps, "steps", "num_inference_steps")
    guidance_scale = pick(guidance_scale, "guidance_scale", "guidance_scale")
    fps = fps or (emb.fps if emb else None) or (spec.default_fps if spec else None)
    notes = []
    if fps is None:
        fps = FALLBACK_FPS
        if is_video:
            notes.append(f"frame rate unknown for {source.pipeline_class}: writing {fps} fps (set --fps)")

    if given["frames"] is not None and not is_video:
        raise CLIError(f"--frames: {source.pipeline_class} is an image pipeline and takes no frame count")
    if spec is not None:
        family = source.name if emb is not None and emb.rules is not None else spec.name.capitalize()
        rules = source.size_rules
        _check_multiple("--height", height, rules.spatial_multiple, family)
        _check_multiple("--width", width, rules.spatial_multiple, family)
        if is_video and frames is not None and rules.frame_multiple > 1 and (frames - 1) % rules.frame_multiple:
            m = rules.frame_multiple
            lo = (frames - 1) // m * m + 1
            raise CLIError(
                f"--frames {frames} is not {m}k+1, which {family} models need (the VAE packs {m} frames per latent "
                f"frame after the first): use {lo} or {lo + m}"
            )
    if before_load is not None:
        before_load(is_video, frames)  # e.g. the output format and folder: cheap, so before diffusers loads

    if params is None:
        params = source.call_parameters()
    if params is not None:
        for flag, value, param in (
            ("--negative-prompt", negative_prompt, "negative_prompt"),
            ("--guidance-scale", given["guidance_scale"], "guidance_scale"),
            ("--height", given["height"], "height"),
            ("--width", given["width"], "width"),
            ("--image", image, "image"),
        ):
            if value is not None and param not in params:
                raise CLIError(f"{flag}: {source.pipeline_class} takes no {param!r}")
        required = [n for n, d in params.items() if d is inspect.Parameter.empty and n != "prompt"]
        if "image" in required and image is None:
            raise CLIError(f"{source.pipeline_class} turns an image into a video: pass --image PATH")
        if set(required) - {"image"}:
            raise CLIError(f"{source.pipeline_class} needs inputs the CLI cannot give: {sorted(required)}")
    if check_plans:
        for preset, config in configs.items():
            if config.attention is not None and config.attention.method == "sparse-vdit":
                sizes = dict(is_video=is_video, height=height, width=width, frames=frames, steps=steps)
                check_plan(source, config, by_preset[preset], **sizes)
    if emb is not None and emb.note:
        notes.append(emb.note)

    request = Request(
        source=source,
        device=device,
        dtype=torch_dtype,
        cpu_offload=cpu_offload,
        overrides=typed,
        overrides_by_preset=by_preset,
        is_video=is_video,
        height=height,
        width=width,
        frames=frames,
        steps=steps,
        guidance_scale=guidance_scale,
        negative_prompt=negative_prompt,
        seed=seed,
        fps=fps,
        image=image,
        call_params=params,
        notes=notes,
        output_type=output_type,
        call_extra={**(emb.call_defaults if emb is not None else {}), **(call_extra or {})},
        compile=compile,
        ulysses=ulysses,
    )
    return request, configs


def check_ulysses(degree: int, cpu_offload: bool = False, env=None) -> None:
    """``--ulysses N`` needs N processes started by torchrun (which sets ``WORLD_SIZE``), one per rank."""
    if degree <= 1:
        return
    env = os.environ if env is None else env
    launch = f"torchrun --nproc-per-node {degree} -m accel.cli ... --ulysses {degree}"
    world = env.get("WORLD_SIZE")
    if world is None:
        raise CLIError(f"--ulysses {degree} splits the denoiser over {degree} processes: launch it with `{launch}`")
    if world != str(degree):
        raise CLIError(
            f"--ulysses {degree} needs {degree} processes but torchrun started {world} (WORLD_SIZE); use `{launch}`"
        )
    if cpu_offload:
        raise CLIError("--ulysses and --cpu-offload do not combine: each rank holds the whole model on its device")


def resolve_request(
    args: argparse.Namespace, presets: list[str], before_load=None, check_plans: bool = True
) -> tuple[Request, dict[str, Any]]:
    """:func:`build_request` from parsed command-line arguments."""
    return build_request(
        args.model,
        presets,
        overrides=dict(args.overrides),
        device=args.device,
        dtype=args.dtype,
        cpu_offload=args.cpu_offload,
        height=args.height,
        width=args.width,
        frames=args.frames,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        fps=getattr(args, "fps", None),
        image=args.image,
        compile=bool(getattr(args, "compile", False)),
        ulysses=int(getattr(args, "ulysses", 1) or 1),
        check_plans=check_plans,
        before_load=before_load,
    )


def read_prompts(prompt: str | None, prompts_file: str | None) -> list[str]:
    """The prompts of a request: the one given, or the lines of ``prompts_file`` (blank lines and # comments
    skipped)."""
    if prompts_file and prompt:
        raise CLIError("give either a prompt or --prompts-file, not both")
    if prompts_file:
        try:
            lines = Path(prompts_file).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise CLIError(f"--prompts-file {prompts_file!r}: {e.strerror or e}") from None
        prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not prompts:
            raise CLIError(f"--prompts-file {prompts_file!r} holds no prompts (one per line)")
        return prompts
    if not prompt or not prompt.strip():
        raise CLIError(f'give a prompt: {PROG} "a red fox running through snow" (or --prompts-file FILE)')
    return [prompt]
