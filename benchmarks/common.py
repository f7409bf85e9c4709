"""Shared helpers for the benchmarks: timing, device naming, result files."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(fn, device: str, warmup: int = 1, repeats: int = 3) -> float:
    """Median wall time in seconds of ``fn()`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fns: dict, device: str, warmup: int = 1, repeats: int = 3) -> dict[str, list[float]]:
    """Wall seconds of each ``fns[name]()`` over ``repeats`` rounds that call every function once, in order, after
    ``warmup`` untimed rounds: ``{name: [seconds per round]}``."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def device_tag(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device)).lower().replace("nvidia ", "").replace(" ", "-")
    return "cpu"


def write_results(
    kind: str, device: str, tag: str | None, payload: dict, markdown: str, folder: Path | None = None
) -> tuple[Path, Path]:
    """Write ``<kind>_<device>[_<tag>].{json,md}`` under ``folder`` (default benchmarks/results/) and say so."""
    stem = f"{kind}_{device_tag(device)}" + (f"_{tag}" if tag else "")
    folder = RESULTS if folder is None else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    js = folder / f"{stem}.json"
    md = folder / f"{stem}.md"
    js.write_text(json.dumps(payload, indent=2) + "\n")
    md.write_text(markdown)
    print(f"wrote {js} and {md}")
    return js, md


def environment(device: str) -> dict:
    import diffusers

    env = {"device": device_name(device), "torch": torch.__version__, "diffusers": diffusers.__version__}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env
