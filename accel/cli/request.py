"""Checking a request before any weights load: presets and ``--set`` values, device and dtype, the model, size
rules, the pipeline's inputs, and (for ``sparse-vdit``) that a calibration plan exists for it.

Every check here is cheap: a bad request fails with a message that says what to fix before a model is built,
loaded or downloaded. The result is a :class:`Request` that the runner (``accel.cli.runner``) carries out.
"""

from __future__ import annotations

import argparse
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PROG, CLIError
from .models import ModelSource, resolve_model
from .parser import DTYPES
from .plan_check import check_plan
from .presets import check_preset, is_dense, preset_overrides

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


def _check_multiple(flag: str, value: int | None, multiple: int, family: str) -> None:
    if value is None or multiple <= 1 or value % multiple == 0:
        return
    lo = value // multiple * multiple
    options = f"{lo} or {lo + multiple}" if lo > 0 else f"{multiple}"
    raise CLIError(f"{flag} {value} is not a multiple of {multiple}, which {family} models need: use {options}")


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
        from accel.api import unsupported

        for preset, config in configs.items():
            reason = unsupported(config.attention, spec)
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
