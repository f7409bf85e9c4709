"""``diffusion-fast bench``: the same prompt and seed, dense and with each preset, on one loaded pipeline.

Per configuration: ``--warmup`` untimed runs, then ``--repeats`` timed runs (median reported). Quality is PSNR and
SSIM of the decoded frames (in [0, 1]) against the dense output. Peak memory is ``torch.cuda.max_memory_allocated``
on CUDA (reset before each run); on CPU it is the process's peak resident set size (Linux ``VmHWM``, reset before
each run by writing 5 to ``/proc/self/clear_refs``), which counts everything the process holds (weights, caches,
the Python heap), not just the run's tensors. Where that reset is unavailable the figure is the peak since the
process started, and the JSON says so.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

from .cli import (
    PROG,
    CLIError,
    Request,
    apply_preset,
    attention_text,
    config_text,
    load,
    resolve_request,
    run_pipeline,
)
from .cli_output import write_atomic


class PeakMemory:
    """Per-run peak memory: CUDA allocator peak, or the process's peak RSS on CPU."""

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


def environment(request: Request) -> dict[str, Any]:
    import diffusers
    import torch

    from . import __version__

    if request.device.startswith("cuda"):
        dev = torch.device(request.device)
        device_name = torch.cuda.get_device_name(dev)
    else:
        device_name = f"{_cpu_name()} ({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads)"
    return {
        "device": request.device,
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


def config_dict(config) -> dict[str, Any] | None:
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


def _check_side_file(path: str, flag: str, ext: str | None) -> Path:
    from .cli_output import OutputError, OutputTarget, check_writable

    p = Path(path).expanduser()
    if ext is not None and p.suffix.lower() != ext:
        raise CLIError(f"{flag} {path!r}: the file must end in {ext}")
    try:
        check_writable(OutputTarget(p, "file"))
    except OutputError as e:
        raise CLIError(f"{flag}: {e}") from None
    return p


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def _fmt(x: float | None, spec: str, none: str = "-") -> str:
    if x is None:
        return none
    if math.isinf(x):
        return "inf"
    return format(x, spec)


def cmd_bench(args) -> int:
    import numpy as np
    import torch

    import accel
    from accel.testing.metrics import psnr, ssim

    presets = ["dense"] + list(dict.fromkeys(p.strip() for p in args.presets if p.strip() != "dense"))
    json_path = _check_side_file(args.json, "--json", None) if args.json else None
    plot_path = _check_side_file(args.plot, "--plot", ".png") if args.plot else None
    request, configs = resolve_request(args, presets)
    quiet = args.quiet

    def note(text: str) -> None:
        if not quiet:
            print(f"{PROG}: {text}", file=sys.stderr, flush=True)

    for n in request.notes:
        note(f"note: {n}")
    memory = PeakMemory(request.device)
    pipe = load(request, quiet)
    env = environment(request)
    note(
        f"bench {request.source.describe()} on {env['device_name']}: {request.size_text()}, {request.steps} steps, "
        f"{args.warmup} warm-up + {args.repeats} timed run(s) per preset"
    )

    rows: list[dict[str, Any]] = []
    outputs: dict[str, np.ndarray] = {}
    for preset in presets:
        accelerated = apply_preset(pipe, preset, configs[preset], request.overrides_by_preset[preset])
        try:
            resolved = accel.accel_config(pipe) if accelerated else None
            for w in range(args.warmup):
                res = run_pipeline(pipe, request, args.prompt, progress=False)
                note(f"{preset}: warm-up {w + 1}/{args.warmup} {res.total_s:.2f} s")
            times, denoise, peaks = [], [], []
            stats = None
            for r in range(args.repeats):
                if accelerated:
                    accel.stats(pipe, reset=True)
                memory.reset()
                res = run_pipeline(pipe, request, args.prompt, progress=False)
                peaks.append(memory.read())
                times.append(res.total_s)
                if res.denoise_s is not None:
                    denoise.append(res.denoise_s)
                note(f"{preset}: run {r + 1}/{args.repeats} {res.total_s:.2f} s")
            if accelerated:
                stats = accel.stats(pipe)  # the last timed run's calls
        finally:
            accel.disable(pipe)
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

    dense = rows[0]
    ref = torch.from_numpy(outputs["dense"])
    for row in rows:
        row["speedup"] = dense["time_s"] / row["time_s"]
        row["denoise_speedup"] = (
            dense["denoise_s"] / row["denoise_s"] if row["denoise_s"] and dense["denoise_s"] else None
        )
        x = torch.from_numpy(outputs[row["preset"]])
        if x.shape != ref.shape:
            row["psnr_db"] = row["ssim"] = None
            row["identical_to_dense"] = False
            continue
        row["psnr_db"] = psnr(x, ref, data_range=1.0)
        # (F, H, W, C) -> (F, C, H, W): every channel of every frame is one SSIM image.
        row["ssim"] = ssim(x.permute(0, 3, 1, 2), ref.permute(0, 3, 1, 2), data_range=1.0)
        row["identical_to_dense"] = bool(torch.equal(x, ref))

    _print_table(rows, memory)

    if json_path is not None:
        payload = {
            "tool": f"{PROG} bench",
            "environment": env,
            "model": {
                "name": request.source.name,
                "kind": request.source.kind,
                "pipeline_class": request.source.pipeline_class,
                "transformer_classes": list(request.source.transformer_classes),
                "family": request.source.spec.name if request.source.spec else None,
                "random_weights": request.source.embedded is not None,
            },
            "settings": {
                "prompt": args.prompt,
                "negative_prompt": request.negative_prompt,
                "seed": request.seed,
                "height": request.height,
                "width": request.width,
                "frames": request.frames,
                "steps": request.steps,
                "guidance_scale": request.guidance_scale,
                "dtype": str(request.dtype).replace("torch.", ""),
                "cpu_offload": request.cpu_offload,
                "warmup": args.warmup,
                "repeats": args.repeats,
                "overrides": request.overrides_by_preset,
            },
            "metrics": {
                "time_s": "median wall time of the whole pipeline call (text encoding, denoising, VAE decode)",
                "denoise_s": "median time from the first denoiser forward to the last step callback",
                "speedup": "dense time_s / preset time_s",
                "psnr_db": "PSNR of decoded frames in [0, 1] against dense (data range 1); null when identical",
                "ssim": "mean SSIM (11x11 gaussian window, sigma 1.5) of decoded frames against dense, per channel",
                "peak_memory": memory.label,
                "stats": "accel.stats of the last timed run (attention calls by outcome and reason)",
            },
            "results": [
                {**{k: v for k, v in row.items() if k != "psnr_db"}, "psnr_db": _finite(row["psnr_db"])} for row in rows
            ],
        }
        text = json.dumps(payload, indent=2, default=str) + "\n"
        write_atomic(json_path, lambda tmp: tmp.write_text(text))
        print(f"wrote {json_path}")
    if plot_path is not None:
        from .cli_plot import bench_plot

        title = (
            f"{PROG} bench: {request.source.name}, {request.size_text()}, {request.steps} steps, {env['device_name']}"
        )
        png = bench_plot(rows, outputs, title)
        write_atomic(plot_path, lambda tmp: tmp.write_bytes(png))
        print(f"wrote {plot_path}")
    return 0


def _print_table(rows: list[dict[str, Any]], memory: PeakMemory) -> None:
    header = ["preset", "time s", "speed-up", "s/step", f"{memory.short} GiB", "PSNR dB", "SSIM", "attention calls"]
    table = [header]
    for row in rows:
        mem = row["peak_memory_bytes"]
        table.append(
            [
                row["preset"],
                f"{row['time_s']:.2f}",
                f"x{row['speedup']:.2f}",
                f"{row['s_per_step']:.3f}",
                _fmt(None if mem is None else mem / 2**30, ".2f"),
                "(ref)" if row["preset"] == "dense" else _fmt(row["psnr_db"], ".1f"),
                "(ref)" if row["preset"] == "dense" else _fmt(row["ssim"], ".4f"),
                attention_text(row["stats"]).replace(" attention calls", ""),
            ]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        cells = [c.ljust(w) if j in (0, 7) else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True))]
        print("  ".join(cells).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"time: median of the timed runs (whole call); {memory.short}: {memory.label}")
