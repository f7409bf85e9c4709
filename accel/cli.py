"""``diffusion-fast``: render a video or image with an accelerated diffusers pipeline, benchmark presets, list things.

    diffusion-fast "a red fox running through snow" -o fox.mp4      # embedded tiny model, offline, CPU is fine
    diffusion-fast "a fox" --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --preset radial -o fox.mp4
    diffusion-fast bench --presets radial --json bench.json --plot bench.png
    diffusion-fast presets | models

Every cheap check (preset names, overrides, size rules, output format and folder, device) runs before a model is
built or loaded; a bad request exits with status 2 and a message that says what to fix. ``python -m accel.cli``
works too. This module is never imported by ``import accel``.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROG = "diffusion-fast"
COMMANDS = ("render", "bench", "calibrate", "presets", "models")
DEFAULT_CALIBRATION_PROMPTS = (
    "a red fox running through snow",
    "waves breaking on a rocky beach at sunset",
    "a busy city street at night, neon signs reflecting in puddles",
)
DEFAULT_BENCH_PROMPT = "a red fox running through snow"
FALLBACK_FPS = 16


class CLIError(Exception):
    """A request the CLI refuses, with the message that says what to fix; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------------------------------- arguments


def _number(cast, what: str, ok, rule: str):
    """An argparse type: ``cast`` the text, then check ``ok(value)``; errors say what was expected."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value

    return parse


_positive_int = _number(int, "a whole number", lambda v: v >= 1, "at least 1")
_non_negative_int = _number(int, "a whole number", lambda v: v >= 0, "0 or more")
_positive_float = _number(float, "a number", lambda v: v > 0, "> 0")


def _override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. decay=0.5), got {text!r}")
    raw = raw.strip()
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return key.strip(), lowered == "true"
    if lowered == "none":
        return key.strip(), None
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


DTYPES = {
    "auto": None,
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .models import DEFAULT_MODEL

    g = p.add_argument_group("model and acceleration")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"embedded model name, diffusers pipeline folder or Hugging Face repo id (default: {DEFAULT_MODEL}, "
        "built offline, random weights); `diffusion-fast models` lists them",
    )
    g.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        type=_override,
        action="append",
        default=[],
        help="override a preset parameter, e.g. --set decay=0.5 --set dense_step_fraction=0.3 (repeatable)",
    )
    g.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N, mps (default: auto = cuda if available, else cpu)"
    )
    g.add_argument(
        "--dtype",
        default="auto",
        choices=list(DTYPES),
        help="weights and compute dtype (default: auto = bfloat16 on CUDA, float32 otherwise)",
    )
    g.add_argument(
        "--cpu-offload",
        action="store_true",
        help="diffusers model CPU offload (enable_model_cpu_offload): each component moves to the GPU only while "
        "it runs; needs CUDA and the `accelerate` package",
    )
    g.add_argument("-v", "--verbose", action="store_true", help="show diffusers/transformers log messages")


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation (defaults: the embedded model's small sizes, else the pipeline's own)")
    g.add_argument("--steps", type=_positive_int, help="denoising steps (tiny-random-wan: 10)")
    g.add_argument("--height", type=_positive_int, help="pixels (Wan: multiple of 16; tiny-random-wan: 256)")
    g.add_argument("--width", type=_positive_int, help="pixels (Wan: multiple of 16; tiny-random-wan: 256)")
    g.add_argument("--frames", type=_positive_int, help="video frames (Wan: 4k+1; tiny-random-wan: 33)")
    g.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale (tiny-random-wan: 5.0)")
    g.add_argument("--negative-prompt", help="what to steer away from")
    g.add_argument("--seed", type=int, default=0, help="random seed; same seed, same output (default: 0)")
    g.add_argument("--image", help="input image for image-to-video pipelines (e.g. WanImageToVideoPipeline)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    top = argparse.ArgumentParser(
        prog=PROG,
        description="Render videos and images with diffusers pipelines accelerated by sparse attention "
        f'(accel). `{PROG} "prompt"` is short for `{PROG} render "prompt"`.',
        epilog=f'examples:\n  {PROG} "a red fox running through snow" -o fox.mp4\n'
        f"  {PROG} bench --presets radial --json bench.json --plot bench.png\n"
        f"  {PROG} render --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = top.add_subparsers(dest="command", metavar="{render,bench,calibrate,presets,models}")

    r = sub.add_parser(
        "render",
        help="render a prompt (or a file of prompts) to a video or image file (the default command)",
        description=f'Render a prompt to a file. `{PROG} "prompt"` is short for `{PROG} render "prompt"`. The '
        "output format follows the extension: .mp4 (H.264), .gif, .webp, .png/.jpg (an image, or a one-frame "
        "video), a folder ending in '/' or a pattern like frames/f_%04d.png (PNG frames).",
    )
    r.add_argument("prompt", nargs="?", help="the text prompt (or use --prompts-file)")
    r.add_argument(
        "-o",
        "--output",
        help="output path; the extension picks the format (default: output.mp4 for video, output.png for an "
        "image or one frame). Several prompts are numbered: out_000.mp4, out_001.mp4, ...",
    )
    r.add_argument("--prompts-file", metavar="FILE", help="one prompt per line (blank lines and # comments skipped)")
    r.add_argument(
        "--preset",
        default="radial",
        help="acceleration preset; '+' composes (e.g. radial+taylorseer); 'dense' for none (default: radial). "
        f"`{PROG} presets` lists them",
    )
    r.add_argument("--fps", type=_positive_float, help="video frame rate (default: the model's, Wan 16)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar or notes; only the summary line")
    _add_model_args(r)
    _add_generation_args(r)
    r.set_defaults(func=cmd_render)

    b = sub.add_parser(
        "bench",
        help="same prompt and seed, dense vs presets: time, speed-up, peak memory, PSNR/SSIM vs dense",
        description="Run the same prompt and seed dense and with each preset on one loaded pipeline: warm-up runs, "
        "then timed repeats (median). Quality is PSNR and SSIM of the decoded frames (in [0, 1]) against the dense "
        "output. Peak memory: torch.cuda.max_memory_allocated on CUDA (reset per run); on CPU the process's peak "
        "resident set size (Linux VmHWM, reset per run through /proc/self/clear_refs), which includes everything "
        "the process holds, not just this run's tensors.",
    )
    b.add_argument("prompt", nargs="?", default=DEFAULT_BENCH_PROMPT, help=f"(default: {DEFAULT_BENCH_PROMPT!r})")
    b.add_argument(
        "--presets",
        nargs="+",
        default=["radial"],
        metavar="PRESET",
        help="presets to compare with dense (default: radial); dense always runs first as the reference. Give the "
        "prompt before --presets, which takes every word after it",
    )
    b.add_argument("--warmup", type=_non_negative_int, default=1, help="untimed runs per preset (default: 1)")
    b.add_argument("--repeats", type=_positive_int, default=3, help="timed runs per preset; median (default: 3)")
    b.add_argument("--json", metavar="PATH", help="write the numbers, environment and configs as JSON")
    b.add_argument("--plot", metavar="PATH.png", help="write a PNG: frame strips and a speed/quality chart")
    b.add_argument("-q", "--quiet", action="store_true", help="no per-run progress lines")
    _add_model_args(b)
    _add_generation_args(b)
    b.set_defaults(func=_cmd_bench)

    c = sub.add_parser(
        "calibrate",
        help="Sparse-vDiT: measure per-head attention patterns on dense runs and save the plan the sparse-vdit "
        "preset loads",
        description="Run dense generations of a few prompts, measure every candidate attention pattern per "
        "(layer, head) against dense attention, pick the cheapest one within --tolerance and save the plan (JSON). "
        "Calibrate with the height, width, frames and steps you will render: the plan is keyed by them and by the "
        f"model. Then render with `{PROG} --preset sparse-vdit ...` (the same sizes find the plan by themselves; "
        "a plan saved elsewhere is used with --set plan=PATH). --set takes the preset's dense_step_fraction, "
        "dense_layers, block_size and backend.",
    )
    c.add_argument("prompts", nargs="*", help="calibration prompts (default: three built-in prompts)")
    c.add_argument("--prompts-file", metavar="FILE", help="one prompt per line (blank lines and # comments skipped)")
    c.add_argument(
        "-o", "--output", help="plan path (default: the plan directory, $ACCEL_PLAN_DIR or ~/.cache/diffusion-fast)"
    )
    c.add_argument(
        "--tolerance",
        type=_positive_float,
        default=0.05,
        help="largest error of a head's output, relative to the layer's mean head energy (default: 0.05)",
    )
    c.add_argument("--step-buckets", type=_positive_int, default=1, help="choose patterns per range of steps")
    c.add_argument("--cost-model", choices=("flops", "measured"), default="flops", help="how candidates are priced")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_model_args(c)
    _add_generation_args(c)
    c.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("presets", help="list acceleration presets, one per line")
    p.set_defaults(func=cmd_presets)
    m = sub.add_parser("models", help="list the embedded model(s) and the supported model families, one per line")
    m.set_defaults(func=cmd_models)
    return top


# ------------------------------------------------------------------------------------------------ resolution


@dataclass
class Request:
    """Everything checked and resolved before the model is built or loaded."""

    source: Any  # models.ModelSource
    device: str
    dtype: Any  # torch.dtype
    cpu_offload: bool
    overrides: dict[str, Any]  # all --set values
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

    def call_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the pipeline call (besides prompt, generator and callbacks)."""
        kw: dict[str, Any] = {"output_type": "np"}
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
        return kw

    def size_text(self, frames_shape: tuple[int, ...] | None = None) -> str:
        if frames_shape is not None:
            f, h, w = frames_shape[:3]
            return f"{f} frame{'s' if f != 1 else ''} {w}x{h}" if self.is_video else f"image {w}x{h}"
        hw = f"{self.width}x{self.height}" if self.height and self.width else "pipeline-default size"
        return f"{self.frames} frames {hw}" if self.is_video and self.frames else hw


def check_preset(preset: str, overrides: dict[str, Any]):
    """Resolve a preset name (with '+' compositions and --set overrides) or raise CLIError."""
    from accel.config import resolve_config

    try:
        return resolve_config(preset, dict(overrides))
    except (ValueError, TypeError) as e:
        raise CLIError(f"preset {preset!r}: {e}; `{PROG} presets` describes them") from None


def _config_fields(config) -> set[str]:
    import dataclasses

    return {f.name for part in (config.attention, config.cache) if part is not None for f in dataclasses.fields(part)}


def preset_overrides(presets: list[str], overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The --set values for each preset. One preset takes them all (unknown keys are an error); with several
    (bench), each preset takes the keys its configs have, and a key no preset has is an error."""
    if len(presets) == 1 or not overrides:
        return {p: dict(overrides) for p in presets}
    fields = {p: _config_fields(check_preset(p, {})) for p in presets}
    unused = [k for k in overrides if not any(k in f for f in fields.values())]
    if unused:
        valid = sorted(set().union(*fields.values()))
        raise CLIError(f"--set {', '.join(unused)}: no preset in {presets} has such a parameter; valid: {valid}")
    return {p: {k: v for k, v in overrides.items() if k in fields[p]} for p in presets}


def _is_dense(config) -> bool:
    return config.attention is None and config.cache is None


def _resolve_device(text: str) -> str:
    import torch

    if text == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
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


def _resolve_dtype(text: str, device: str):
    import torch

    name = DTYPES[text]
    if name is None:
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, name)


def _check_multiple(flag: str, value: int | None, multiple: int, family: str) -> None:
    if value is None or multiple <= 1 or value % multiple == 0:
        return
    lo = value // multiple * multiple
    options = f"{lo} or {lo + multiple}" if lo > 0 else f"{multiple}"
    raise CLIError(f"{flag} {value} is not a multiple of {multiple}, which {family} models need: use {options}")


def resolve_request(args: argparse.Namespace, presets: list[str], before_load=None) -> tuple[Request, dict[str, Any]]:
    """Check presets, model, device, sizes before anything heavy; returns the request and preset -> config.

    ``before_load(is_video, frames)`` runs once the output shape is known, before the pipeline class is imported.
    """
    from .models import ModelError, resolve_model

    overrides = dict(args.overrides)
    overrides_by_preset = preset_overrides(presets, overrides)
    configs = {p: check_preset(p, overrides_by_preset[p]) for p in presets}
    device = _resolve_device(args.device)
    if args.cpu_offload:
        import importlib.util

        if not device.startswith("cuda"):
            raise CLIError("--cpu-offload moves components to a CUDA GPU while they run; it needs --device cuda")
        if importlib.util.find_spec("accelerate") is None:
            raise CLIError("--cpu-offload needs the `accelerate` package: pip install accelerate")
    dtype = _resolve_dtype(args.dtype, device)
    if args.image is not None and not Path(args.image).is_file():
        raise CLIError(f"--image {args.image!r}: no such file")

    try:
        source = resolve_model(args.model)
    except ModelError as e:
        raise CLIError(str(e), code=2 if e.usage else 1) from None
    spec = source.spec
    for preset, config in configs.items():
        if not _is_dense(config) and spec is None:
            from accel.pipelines import supported_models_text

            transformer = ", ".join(source.transformer_classes) or "no transformer"
            raise CLIError(
                f"preset {preset!r} cannot accelerate {source.pipeline_class} ({transformer}) yet; supported "
                f"models: {supported_models_text()}. Render it without acceleration with --preset dense"
            )

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

    height = pick(args.height, "height", "height")
    width = pick(args.width, "width", "width")
    frames = pick(args.frames, "frames", "num_frames") if is_video else None
    steps = pick(args.steps, "steps", "num_inference_steps")
    guidance = pick(args.guidance_scale, "guidance_scale", "guidance_scale")
    fps = getattr(args, "fps", None) or (emb.fps if emb else None) or (spec.default_fps if spec else None)
    notes = []
    if fps is None:
        fps = FALLBACK_FPS
        if is_video:
            notes.append(f"frame rate unknown for {source.pipeline_class}: writing {fps} fps (set --fps)")

    if args.frames is not None and not is_video:
        raise CLIError(f"--frames: {source.pipeline_class} is an image pipeline and takes no frame count")
    if spec is not None:
        family = spec.name.capitalize()
        _check_multiple("--height", height, spec.spatial_multiple, family)
        _check_multiple("--width", width, spec.spatial_multiple, family)
        if is_video and frames is not None and spec.frame_multiple > 1 and (frames - 1) % spec.frame_multiple:
            m = spec.frame_multiple
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
            ("--negative-prompt", args.negative_prompt, "negative_prompt"),
            ("--guidance-scale", args.guidance_scale, "guidance_scale"),
            ("--height", args.height, "height"),
            ("--width", args.width, "width"),
            ("--image", args.image, "image"),
        ):
            if value is not None and param not in params:
                raise CLIError(f"{flag}: {source.pipeline_class} takes no {param!r}")
        required = [n for n, d in params.items() if d is inspect.Parameter.empty and n != "prompt"]
        if "image" in required and args.image is None:
            raise CLIError(f"{source.pipeline_class} turns an image into a video: pass --image PATH")
        if set(required) - {"image"}:
            raise CLIError(f"{source.pipeline_class} needs inputs the CLI cannot give: {sorted(required)}")
    if emb is not None and emb.note:
        notes.append(emb.note)

    request = Request(
        source=source,
        device=device,
        dtype=dtype,
        cpu_offload=args.cpu_offload,
        overrides=overrides,
        overrides_by_preset=overrides_by_preset,
        is_video=is_video,
        height=height,
        width=width,
        frames=frames,
        steps=steps,
        guidance_scale=guidance,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        fps=fps,
        image=args.image,
        call_params=params,
        notes=notes,
    )
    return request, configs


# --------------------------------------------------------------------------------------------------- running


def load(request: Request, quiet: bool = False):
    """Build or load the pipeline and put it on the device (or set up CPU offload)."""
    from .models import ModelError, load_pipeline

    if quiet:  # diffusers' and transformers' loading bars
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()

    try:
        pipe = load_pipeline(request.source, request.dtype)
    except ModelError as e:
        raise CLIError(str(e), code=1) from None
    if request.cpu_offload:
        pipe.enable_model_cpu_offload(device=request.device)
    else:
        pipe.to(request.device)
    return pipe


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


class StepTimer:
    """Times the denoising loop: from the first denoiser forward to the last ``callback_on_step_end``."""

    def __init__(self, pipe, device: str):
        import torch

        self.device = device
        self.modules = [
            m
            for m in (getattr(pipe, n, None) for n in ("transformer", "transformer_2", "unet"))
            if isinstance(m, torch.nn.Module)
        ]
        self.first: float | None = None
        self.step_ends: list[float] = []
        self._handles: list[Any] = []

    def __enter__(self):
        self._handles = [m.register_forward_pre_hook(self._pre) for m in self.modules]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []

    def _pre(self, module, args):
        if self.first is None:
            sync(self.device)
            self.first = time.perf_counter()

    def on_step_end(self, pipe, step, timestep, callback_kwargs):
        sync(self.device)
        self.step_ends.append(time.perf_counter())
        return {}

    @property
    def denoise_s(self) -> float | None:
        if self.first is None or not self.step_ends:
            return None
        return self.step_ends[-1] - self.first


@dataclass
class RunResult:
    frames: Any  # np.ndarray (F, H, W, C) float in [0, 1]
    total_s: float
    denoise_s: float | None
    steps: int


def output_frames(out, is_video: bool):
    """Decoded frames (F, H, W, C) float32 in [0, 1] from a pipeline output (output_type='np')."""
    import numpy as np
    import torch

    value = getattr(out, "frames", None)
    if value is None:
        value = getattr(out, "images", None)
    if value is None and isinstance(out, (tuple, list)):
        value = out[0]
    if isinstance(value, torch.Tensor):
        value = value.float().cpu().numpy()
    if isinstance(value, list):
        first = value[0]
        if isinstance(first, list):  # [batch][frame] of PIL images
            value = first
        value = np.stack(
            [np.asarray(v, dtype=np.float32) / (255.0 if np.asarray(v).dtype == np.uint8 else 1.0) for v in value]
        )
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim == 5:  # (B, F, H, W, C)
        arr = arr[0]
    elif arr.ndim == 4 and not is_video:  # (B, H, W, C)
        arr = arr[:1]
    elif arr.ndim == 3:
        arr = arr[None]
    if arr.shape[-1] not in (1, 3, 4) and arr.shape[1] in (1, 3, 4):  # channels first
        arr = np.moveaxis(arr, 1, -1)
    return arr[..., :3]


def run_pipeline(pipe, request: Request, prompt: str, *, progress: bool, desc: str = "denoising") -> RunResult:
    """One pipeline call with the request's settings; frames decoded to [0, 1]."""
    import torch

    kwargs = request.call_kwargs()
    timer = StepTimer(pipe, request.device)
    if request.call_params is None or "callback_on_step_end" in request.call_params:
        kwargs["callback_on_step_end"] = timer.on_step_end
    pipe.set_progress_bar_config(disable=not progress, desc=desc, leave=False, file=sys.stderr)
    generator = torch.Generator("cpu").manual_seed(request.seed)  # CPU generator: same noise on every device
    with timer:
        sync(request.device)
        t0 = time.perf_counter()
        from .sparse_vdit import PlanError

        try:
            out = pipe(prompt=prompt, generator=generator, **kwargs)
        except PlanError as e:  # sparse-vdit without a plan for this request
            raise CLIError(str(e), code=1) from None
        except ValueError as e:  # diffusers' check_inputs: the request does not suit this pipeline
            raise CLIError(f"{type(pipe).__name__} rejected the request: {e}", code=1) from e
        sync(request.device)
        total = time.perf_counter() - t0
    steps = len(timer.step_ends) or request.steps or 0
    return RunResult(output_frames(out, request.is_video), total, timer.denoise_s, steps)


def attention_text(stats: dict[str, Any] | None) -> str:
    """One phrase from accel.stats: '32 sparse, 48 dense, 0 fallback attention calls (mean sparse density 0.88)',
    plus cache outcomes ('cache: 24 computed, 12 predicted') when a feature cache is installed."""
    if stats is None:
        return "dense attention (no acceleration)"
    parts = []
    if any(k in stats for k in ("sparse", "dense", "fallback")):
        text = ", ".join(f"{stats.get(k, 0)} {k}" for k in ("sparse", "dense", "fallback")) + " attention calls"
        if stats.get("mean_sparse_density") is not None:
            text += f" (mean sparse density {stats['mean_sparse_density']:.2f})"
        parts.append(text)
    cache = {k.split(":", 1)[1]: v for k, v in stats.items() if k.startswith("cache:") and isinstance(v, int)}
    if cache:
        parts.append("cache: " + ", ".join(f"{v} {k}" for k, v in cache.items()))
    return "; ".join(parts) or "no attention calls recorded"


def config_text(config) -> str:
    """The resolved config in one line, e.g. 'radial(decay=0.2, dense_step_fraction=0.24, ...)'."""
    import dataclasses

    if config is None:
        return "dense"
    parts = []
    for part in (config.attention, config.cache):
        if part is None:
            continue
        if dataclasses.is_dataclass(part):
            fields = ", ".join(f"{f.name}={getattr(part, f.name)!r}" for f in dataclasses.fields(part))
            parts.append(f"{getattr(part, 'method', type(part).__name__)}({fields})")
        else:
            parts.append(repr(part))
    return " + ".join(parts) or "dense"


def apply_preset(pipe, preset: str, config, overrides: dict[str, Any]) -> bool:
    """accelerate(pipe, preset) unless the preset is dense; True when accelerated."""
    import accel

    if _is_dense(config):
        return False
    try:
        accel.accelerate(pipe, preset, **overrides)
    except (ValueError, NotImplementedError) as e:
        raise CLIError(f"preset {preset!r}: {e}", code=1) from None
    return True


def _note(text: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def _quiet_libraries(verbose: bool) -> None:
    if not verbose:
        # Before diffusers / transformers are imported: they read these once.
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


# -------------------------------------------------------------------------------------------------- commands


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompts_file and args.prompt:
        raise CLIError("give either a prompt or --prompts-file, not both")
    if args.prompts_file:
        path = Path(args.prompts_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise CLIError(f"--prompts-file {args.prompts_file!r}: {e.strerror or e}") from None
        prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not prompts:
            raise CLIError(f"--prompts-file {args.prompts_file!r} holds no prompts (one per line)")
        return prompts
    if not args.prompt or not args.prompt.strip():
        raise CLIError(f'give a prompt: {PROG} "a red fox running through snow" (or --prompts-file FILE)')
    return [args.prompt]


def cmd_render(args: argparse.Namespace) -> int:
    from .cli_output import OutputError, check_writable, numbered, parse_output

    prompts = read_prompts(args)
    targets = []

    def check_outputs(is_video: bool, frames: int | None) -> None:
        single = (is_video and frames == 1) or not is_video
        out_spec = args.output or ("output.png" if single else "output.mp4")
        try:
            target = parse_output(out_spec, is_video=is_video, frames=frames)
            targets.extend(numbered(target, i, len(prompts)) for i in range(len(prompts)))
            for t in targets:
                check_writable(t)
        except OutputError as e:
            raise CLIError(str(e)) from None

    request, configs = resolve_request(args, [args.preset], before_load=check_outputs)
    config = configs[args.preset]
    quiet = args.quiet
    for note in request.notes:
        _note(f"note: {note}", quiet)
    import accel

    t_load = time.perf_counter()
    pipe = load(request, quiet)
    accelerated = apply_preset(pipe, args.preset, config, request.overrides_by_preset[args.preset])
    resolved = accel.accel_config(pipe) if accelerated else None
    _note(
        f"{request.source.describe()} on {request.device} ({str(request.dtype).replace('torch.', '')}), ready in "
        f"{time.perf_counter() - t_load:.1f} s; preset {args.preset}: {config_text(resolved)}",
        quiet,
    )
    if accelerated and request.device == "cpu" and resolved is not None and resolved.attention is not None:
        _note("the first sparse attention call compiles its kernel once (about 10-20 s on CPU)", quiet)

    try:
        return _render_all(pipe, request, prompts, targets, args, accelerated, quiet)
    finally:
        if accelerated:
            accel.disable(pipe)  # leave the process as we found it (the CLI also runs in-process in tests)


def _render_all(pipe, request, prompts, targets, args, accelerated: bool, quiet: bool) -> int:
    import accel

    from .cli_output import OutputError, write_output

    t_all = time.perf_counter()
    n = len(prompts)
    for i, (prompt, tgt) in enumerate(zip(prompts, targets, strict=True)):
        tag = f"[{i + 1}/{n}] " if n > 1 else ""
        res = run_pipeline(pipe, request, prompt, progress=not quiet, desc=f"{tag}denoising")
        stats = accel.stats(pipe, reset=True) if accelerated else None
        try:
            written = write_output(tgt, res.frames, request.fps)
        except (OutputError, OSError) as e:  # e.g. the disk filled up; nothing half-written is left
            raise CLIError(f"cannot write {tgt}: {e}", code=1) from None
        where = str(tgt) if len(written) == 1 else f"{tgt} ({len(written)} files)"
        speed = (
            f"denoising {res.denoise_s:.1f} s = {res.denoise_s / max(res.steps, 1):.2f} s/step"
            if res.denoise_s is not None
            else f"{res.total_s / max(res.steps, 1):.2f} s/step incl. encode and decode"
        )
        fps_text = f" at {request.fps:g} fps" if request.is_video and res.frames.shape[0] > 1 else ""
        print(
            f"{tag}saved {where}: {request.size_text(res.frames.shape)}{fps_text} | {res.total_s:.1f} s, {speed} "
            f"({res.steps} steps) | preset {args.preset} | {attention_text(stats)} | model {request.source.name}",
            flush=True,
        )
    if n > 1:
        print(f"done: {n} outputs in {time.perf_counter() - t_all:.1f} s", flush=True)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .cli_bench import cmd_bench

    return cmd_bench(args)


def cmd_calibrate(args: argparse.Namespace) -> int:
    import accel

    if args.prompts and args.prompts_file:
        raise CLIError("give prompts or --prompts-file, not both")
    if args.prompts_file:
        args.prompt = None
        prompts = read_prompts(args)
    else:
        prompts = list(args.prompts) or list(DEFAULT_CALIBRATION_PROMPTS)
    request, _ = resolve_request(args, ["sparse-vdit"])
    over = request.overrides_by_preset["sparse-vdit"]
    if "plan" in over:
        raise CLIError("calibrate writes a plan: give its path with -o/--output, not --set plan=...")
    pipe = load(request, args.quiet)
    pipe.set_progress_bar_config(disable=args.quiet, leave=False, file=sys.stderr)
    kwargs = {**request.call_kwargs(), "output_type": "latent"}
    t0 = time.perf_counter()
    try:
        plan = accel.calibrate(
            pipe,
            prompts,
            path=args.output,
            tolerance=args.tolerance,
            step_buckets=args.step_buckets,
            cost_model=args.cost_model,
            **over,
            **kwargs,
        )
    except ValueError as e:
        raise CLIError(str(e), code=1) from None
    counts = ", ".join(f"{v} {k}" for k, v in sorted(plan.meta["pattern_counts"].items()))
    print(
        f"saved {plan.meta['path']}: {len(prompts)} prompts in {time.perf_counter() - t0:.1f} s | head patterns: "
        f"{counts} | mean kept fraction {plan.meta['mean_kept_fraction']:.2f} at tolerance {args.tolerance:g} | "
        f"model {request.source.name}",
        flush=True,
    )
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    import accel

    presets = accel.list_presets()
    width = max(map(len, presets))
    for name, description in presets.items():
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import models_lines

    for line in models_lines():
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    if argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version"):
        argv = ["render", *argv]
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    _quiet_libraries(getattr(args, "verbose", False))
    try:
        return args.func(args)
    except CLIError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
