"""``bench``: dense against each preset in one process, the same prompts and seeds; time, peak memory and quality of
every preset against dense."""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .request import Request
from .runner import apply_preset, compile_denoisers, config_dict, config_text, run_pipeline, uncompile_denoisers


class PeakMemory:
    """Per-run peak memory: CUDA allocator peak, or the process's peak RSS on CPU.

    On CPU the figure is Linux ``VmHWM``, reset before each run by writing 5 to ``/proc/self/clear_refs``; it counts
    everything the process holds (weights, caches, the Python heap), not just the run's tensors. Where that reset
    is unavailable it is the peak since the process started (``ru_maxrss``), and the label says so.
    """

    def __init__(self, device: str):
        self.device = device
        if device.startswith("cuda"):
            self.label = "peak CUDA memory allocated (torch.cuda.max_memory_allocated, reset per run)"
            self.short = "peak CUDA alloc"
            self.mode = "cuda"
        elif self._clear_refs_works():
            self.label = (
                "peak process RSS (Linux VmHWM, reset per run via /proc/self/clear_refs; includes the model weights "
                "and everything else the process holds)"
            )
            self.short = "peak RSS"
            self.mode = "vmhwm"
        else:
            self.label = "peak process RSS since the process started (ru_maxrss; cannot be reset per run here)"
            self.short = "peak RSS*"
            self.mode = "rusage"

    @staticmethod
    def _vmhwm() -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None

    def _clear_refs_works(self) -> bool:
        if self._vmhwm() is None:
            return False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return False
        return True

    def reset(self) -> None:
        if self.mode == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(torch.device(self.device))
        elif self.mode == "vmhwm":
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def read(self) -> int | None:
        if self.mode == "cuda":
            import torch

            return int(torch.cuda.max_memory_allocated(torch.device(self.device)))
        if self.mode == "vmhwm":
            return self._vmhwm()
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


def finite(x: float | None) -> float | None:
    """None for None, inf or nan (JSON has no infinity)."""
    return None if x is None or not math.isfinite(x) else x


def compare(
    pipe,
    request: Request,
    prompt: str,
    presets: list[str],
    configs: dict[str, Any],
    *,
    warmup: int = 1,
    repeats: int = 3,
    memory: PeakMemory | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run ``prompt`` with each preset (``presets[0]`` is the reference, normally ``dense``) on one loaded pipeline:
    ``warmup`` untimed runs, then ``repeats`` timed runs (median). Returns one row per preset and its last output.

    A row holds: preset, config (resolved, JSON-ready) and config_text, times_s / time_s (median) / time_min_s,
    denoise_s, s_per_step, steps, peak_memory_bytes, stats (accel.stats of the last timed run), output_shape,
    speedup and denoise_speedup against the reference, psnr_db (decoded frames: data range 1; latents: the
    reference's span), ssim (decoded frames only), rel_l2 and identical_to_dense.
    """
    import accel

    memory = memory or PeakMemory(request.device)
    say = progress or (lambda text: None)
    rows: list[dict[str, Any]] = []
    outputs: dict[str, Any] = {}
    for preset in presets:
        accelerated = apply_preset(pipe, preset, configs[preset], request.overrides_by_preset[preset])
        if request.compile:  # after accelerate, which refuses a compiled transformer; undone below
            compile_denoisers(pipe)
        try:
            resolved = accel.accel_config(pipe) if accelerated else None
            for w in range(warmup):
                res = run_pipeline(pipe, request, prompt, progress=False)
                say(f"{preset}: warm-up {w + 1}/{warmup} {res.total_s:.2f} s")
            times, denoise, peaks = [], [], []
            stats = None
            for r in range(repeats):
                if accelerated:
                    accel.stats(pipe, reset=True)
                memory.reset()
                res = run_pipeline(pipe, request, prompt, progress=False)
                peaks.append(memory.read())
                times.append(res.total_s)
                if res.denoise_s is not None:
                    denoise.append(res.denoise_s)
                say(f"{preset}: run {r + 1}/{repeats} {res.total_s:.2f} s")
            if accelerated:
                stats = accel.stats(pipe)  # the last timed run's calls
        finally:
            if accelerated:
                accel.disable(pipe)
            if request.compile:
                uncompile_denoisers(pipe)
        outputs[preset] = res.frames
        t = statistics.median(times)
        d = statistics.median(denoise) if denoise else None
        rows.append(
            {
                "preset": preset,
                "config": config_dict(resolved),
                "config_text": config_text(resolved),
                "times_s": times,
                "time_s": t,
                "time_min_s": min(times),
                "denoise_s": d,
                "s_per_step": (d if d is not None else t) / max(res.steps, 1),
                "steps": res.steps,
                "peak_memory_bytes": max((p for p in peaks if p is not None), default=None),
                "stats": stats,
                "output_shape": list(res.frames.shape),
            }
        )
    _quality(rows, outputs, latent=request.output_type == "latent")
    return rows, outputs


def _quality(rows: list[dict[str, Any]], outputs: dict[str, Any], latent: bool) -> None:
    import torch

    from accel.testing.metrics import psnr, relative_l2, ssim

    ref_row = rows[0]
    ref = torch.from_numpy(outputs[ref_row["preset"]])
    for row in rows:
        row["speedup"] = ref_row["time_s"] / row["time_s"]
        row["denoise_speedup"] = (
            ref_row["denoise_s"] / row["denoise_s"] if row["denoise_s"] and ref_row["denoise_s"] else None
        )
        x = torch.from_numpy(outputs[row["preset"]])
        if x.shape != ref.shape:
            row["psnr_db"] = row["ssim"] = row["rel_l2"] = None
            row["identical_to_dense"] = False
            continue
        row["psnr_db"] = psnr(x, ref, data_range=None if latent else 1.0)
        # (F, H, W, C) -> (F, C, H, W): every channel of every frame is one SSIM image.
        row["ssim"] = None if latent else ssim(x.permute(0, 3, 1, 2), ref.permute(0, 3, 1, 2), data_range=1.0)
        row["rel_l2"] = relative_l2(x, ref)
        row["identical_to_dense"] = bool(torch.equal(x, ref))
