"""Carrying out a checked request: load the pipeline, apply a preset, run it timed, and compare presets with dense.

This is the one harness behind ``diffusion-fast render``, ``diffusion-fast bench`` and
``benchmarks/bench_pipeline.py``: the same pipeline call (CPU generator, so the same noise on every device), the
same timing (whole call, and the denoising loop from the first denoiser forward to the last step callback), the same
quality measures against the dense output (PSNR, SSIM of decoded frames, relative L2) and the same per-run peak
memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EXIT_FAILURE, PROG, CLIError
from .models import ModelError, load_pipeline
from .plan_check import _cli_spelling
from .request import Request, is_dense
from .sizes import runs_all_dense, token_grid


def note(text: str, quiet: bool = False) -> None:
    """A line on stderr, prefixed with the program name (notes, progress); nothing when ``quiet``."""
    if not quiet:
        print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def quiet_libraries(verbose: bool) -> None:
    if not verbose:
        # Before diffusers / transformers are imported: they read these once.
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


# ----------------------------------------------------------------------------------------------- set-up


def load(request: Request, quiet: bool = False):
    """Build or load the pipeline and put it on the device (or set up CPU offload)."""
    if quiet:  # diffusers' and transformers' loading bars
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()

    try:
        pipe = load_pipeline(request.source, request.dtype)
    except ModelError as e:
        raise CLIError(str(e), code=EXIT_FAILURE) from None
    if request.cpu_offload:
        pipe.enable_model_cpu_offload(device=request.device)
    else:
        pipe.to(request.device)
    return pipe


def start_parallel(request: Request) -> int:
    """Under torchrun with ``--ulysses N``: join the process group (nccl on CUDA, each rank on its local GPU;
    gloo on CPU) before the pipeline loads; returns this process's rank (0 without ``--ulysses``)."""
    if request.ulysses <= 1:
        return 0
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = request.device.startswith("cuda")
        if cuda:
            import torch

            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank()


def stop_parallel(request: Request) -> None:
    if request.ulysses > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def parallelize(pipe, request: Request) -> list[str]:
    """``enable_parallelism`` with Ulysses degree ``request.ulysses`` on each denoiser (before ``accelerate``; the
    order does not matter to accel). Returns the denoisers' names."""
    from accel.pipelines import denoisers

    from accel.api import enable_context_parallel

    names = []
    for name, module in denoisers(pipe):
        if getattr(module, "_cp_plan", None) is None:
            raise CLIError(
                f"--ulysses: pipe.{name} ({type(module).__name__}) has no context-parallel plan in diffusers",
                code=EXIT_FAILURE,
            )
        enable_context_parallel(module, ulysses_degree=request.ulysses)
        names.append(name)
    return names


def apply_preset(pipe, preset: str, config, overrides: dict[str, Any]) -> bool:
    """accelerate(pipe, preset) unless the preset is dense; True when accelerated."""
    import accel

    if is_dense(config):
        return False
    try:
        accel.accelerate(pipe, preset, **overrides)
    except (ValueError, NotImplementedError) as e:
        raise CLIError(f"preset {preset!r}: {e}", code=EXIT_FAILURE) from None
    return True


def compile_denoisers(pipe, **compile_kwargs) -> list[str]:
    """torch.compile each denoiser of ``pipe`` in place (after ``accelerate``: it refuses compiled transformers):
    regional compilation of the repeated blocks where the model declares them (``_repeated_blocks``, diffusers'
    recommendation: one block compiled and reused), else the whole module. Returns ``"name: regional|whole"`` each.

    Every hooked block is its own compile (dynamo guards each module's hooked ``forward`` by identity), so the
    recompile limit is raised to the block count; it does not grow with the step count.
    """
    import torch
    from accel.pipelines import denoisers

    done = []
    for name, module in denoisers(pipe):
        blocks = getattr(module, "_repeated_blocks", None)
        if blocks:
            n = sum(type(m).__name__ in blocks for m in module.modules())
            limit = torch._dynamo.config.recompile_limit
            torch._dynamo.config.recompile_limit = max(limit, 2 * n + 8)
            module.compile_repeated_blocks(**compile_kwargs)
            done.append(f"{name}: regional")
        else:
            module.compile(**compile_kwargs)
            done.append(f"{name}: whole")
    return done


def uncompile_denoisers(pipe) -> None:
    """Undo :func:`compile_denoisers` (module.compile() in place), so another preset can be applied (bench)."""
    from accel.pipelines import denoisers

    for _, module in denoisers(pipe):
        for m in module.modules():
            if getattr(m, "_compiled_call_impl", None) is not None:
                m._compiled_call_impl = None


def sparse_calls_expected(pipe, request: Request, resolved) -> bool:
    """Whether the resolved config can make any sparse attention call on this request (so a kernel may compile)."""
    spec = request.source.spec
    if resolved is None or resolved.attention is None or spec is None:
        return False
    layout = token_grid(request.source.size_rules, request.is_video, request.frames, request.height, request.width)
    from accel.pipelines import denoisers

    layers = [len(spec.self_attention_layers(t)) for _, t in denoisers(pipe)]
    return not runs_all_dense(resolved.attention, request.steps, layout, min(layers) if layers else None)


@contextlib.contextmanager
def compile_notice(text: str, expected: bool, quiet: bool = False):
    """While the block runs, say ``text`` once, when a kernel compile actually starts (torch.compile's compile-start
    callback: the sparse kernels compile on their first call), and only if ``expected`` (sparse calls can happen at
    all). Where that callback does not exist (another torch), ``text`` is said up front when expected."""
    if not expected or quiet:
        yield
        return
    try:
        from torch._dynamo.callback import callback_handler

        register, remove = callback_handler.register_start_callback, callback_handler.remove_start_callback
    except (ImportError, AttributeError):
        note(text)
        yield
        return
    said = []

    def on_compile_start(*args) -> None:
        if not said:
            said.append(True)
            from tqdm import tqdm

            tqdm.write(f"{PROG}: {text}", file=sys.stderr)  # above the progress bar, not through it

    register(on_compile_start)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            remove(on_compile_start)


# ------------------------------------------------------------------------------------------------ one run


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


class StepTimer:
    """Times the denoising loop: from the first denoiser forward to the last ``callback_on_step_end``."""

    def __init__(self, pipe, device: str):
        import torch
        from accel.pipelines import denoiser_attrs

        self.device = device
        self.modules = [
            m for m in (getattr(pipe, n, None) for n in (*denoiser_attrs(), "unet")) if isinstance(m, torch.nn.Module)
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
    frames: Any  # np.ndarray: decoded frames (F, H, W, C) float in [0, 1], or the latents for output_type="latent"
    total_s: float
    denoise_s: float | None
    steps: int


def output_frames(out, is_video: bool, output_type: str = "np"):
    """Decoded frames (F, H, W, C) float32 in [0, 1] from a pipeline output (output_type='np'); the output as a
    float32 array for output_type='latent'."""
    import numpy as np
    import torch

    value = getattr(out, "frames", None)
    if value is None:
        value = getattr(out, "images", None)
    if value is None and isinstance(out, (tuple, list)):
        value = out[0]
    if isinstance(value, torch.Tensor):
        value = value.float().cpu().numpy()
    if output_type == "latent":
        return np.asarray(value, dtype=np.float32)
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
    """One pipeline call with the request's settings, timed; frames decoded to [0, 1] (or latents)."""
    import torch

    from accel.errors import PlanError

    kwargs = request.call_kwargs()
    timer = StepTimer(pipe, request.device)
    if request.call_params is None or "callback_on_step_end" in request.call_params:
        kwargs["callback_on_step_end"] = timer.on_step_end
    pipe.set_progress_bar_config(disable=not progress, desc=desc, leave=False, file=sys.stderr)
    generator = torch.Generator("cpu").manual_seed(request.seed)  # CPU generator: same noise on every device
    with timer:
        sync(request.device)
        t0 = time.perf_counter()
        try:
            out = pipe(prompt=prompt, generator=generator, **kwargs)
        except PlanError as e:  # sparse-vdit without a plan for this request (where it could not be checked first)
            raise CLIError(_cli_spelling(str(e)), code=EXIT_FAILURE) from None
        except ValueError as e:  # diffusers' check_inputs: the request does not suit this pipeline
            raise CLIError(f"{type(pipe).__name__} rejected the request: {e}", code=EXIT_FAILURE) from e
        sync(request.device)
        total = time.perf_counter() - t0
    steps = len(timer.step_ends) or request.steps or 0
    return RunResult(output_frames(out, request.is_video, request.output_type), total, timer.denoise_s, steps)


# ------------------------------------------------------------------------------------------------ reporting


def attention_text(stats: dict[str, Any] | None) -> str:
    """One phrase from accel.stats: '32 sparse, 48 dense, 0 fallback attention calls (mean sparse density 0.88)',
    plus cache outcomes ('cache: 24 computed, 12 predicted' module calls; an adaptive schedule also says how many
    forwards it predicted) when a feature cache is installed."""
    if stats is None:
        return "dense attention (no acceleration)"
    parts = []
    if any(k in stats for k in ("sparse", "dense", "fallback")):
        text = ", ".join(f"{stats.get(k, 0)} {k}" for k in ("sparse", "dense", "fallback")) + " attention calls"
        if stats.get("mean_sparse_density") is not None:
            text += f" (mean sparse density {stats['mean_sparse_density']:.2f})"
        parts.append(text)
    cache = {k.split(":", 1)[1]: v for k, v in stats.items() if k.startswith("cache:") and isinstance(v, int)}
    full, skipped = cache.pop("full_steps", 0), cache.pop("predicted_steps", 0)
    words = [f"adaptive, {skipped} of {full + skipped} forwards predicted"] if full or skipped else []
    words += [f"{v} {k}" for k, v in cache.items()]  # module calls computed / predicted
    if words:
        parts.append("cache: " + ", ".join(words))
    return "; ".join(parts) or "no attention calls recorded"


def config_text(config) -> str:
    """The resolved config in one line, e.g. 'radial(decay=0.2, dense_step_fraction=0.24, ...)'."""
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


def config_dict(config) -> dict[str, Any] | None:
    """The resolved config as JSON-ready data: name, then each part's method and fields."""
    if config is None:
        return None
    out: dict[str, Any] = {"name": config.name}
    for key in ("attention", "cache"):
        part = getattr(config, key)
        if part is None:
            out[key] = None
        elif dataclasses.is_dataclass(part):
            out[key] = {"method": getattr(part, "method", type(part).__name__), **dataclasses.asdict(part)}
        else:
            out[key] = repr(part)
    return out


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict[str, Any]:
    """Device and library versions, for result files."""
    import diffusers
    import torch

    from accel import __version__

    if device.startswith("cuda"):
        device_name = torch.cuda.get_device_name(torch.device(device))
    else:
        device_name = f"{_cpu_name()} ({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads)"
    return {
        "device": device,
        "device_name": device_name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": _version("transformers"),
        "triton": _version("triton"),
        "accel": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
