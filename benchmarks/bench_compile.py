"""Compiled vs eager accelerated pipelines, side by side in one run (tiny offline Wan, long sequence).

    python benchmarks/bench_compile.py                      # CPU: 256x256 px, 33 frames (2,304 tokens), 4 steps
    python benchmarks/bench_compile.py --device cuda --height 480 --width 832 --frames 81

For dense and radial: eager, then regional compilation (``compile_repeated_blocks``, as ``--compile`` in the CLI)
with Inductor. Reports the first compiled run (compile included), the median of the timed runs, dynamo's graph
breaks and captured graphs, and the largest difference from the eager output of the same preset. Results go to
benchmarks/results/compile_<device>.{json,md}. Random weights: times only, the outputs are noise.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch._dynamo.utils import counters

import accel
from accel.cli.runner import compile_denoisers
from accel.testing import tiny_wan_pipeline
from benchmarks.common import environment, sync, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    args = ap.parse_args()
    call = dict(prompt="w3 w4", num_inference_steps=args.steps, height=args.height, width=args.width,
                num_frames=args.frames, max_sequence_length=16, guidance_scale=5.0, output_type="latent")  # fmt: skip
    tokens = ((args.frames - 1) // 4 + 1) * (args.height // 16) * (args.width // 16)

    def run(pipe):
        sync(args.device)
        t = time.perf_counter()
        out = pipe(generator=torch.Generator().manual_seed(0), **call).frames
        sync(args.device)
        return out, time.perf_counter() - t

    rows = []
    for preset in ("dense", "radial"):
        eager_out = None
        for mode in ("eager", "compiled"):
            torch._dynamo.reset()
            counters.clear()
            pipe = tiny_wan_pipeline(num_layers=args.layers, num_heads=args.heads, head_dim=args.head_dim)
            pipe.to(args.device)
            pipe.set_progress_bar_config(disable=True)
            if preset != "dense":
                accel.accelerate(pipe, preset, dense_layers=0, dense_step_fraction=0.25, min_speedup=0)
            if mode == "compiled":
                compile_denoisers(pipe)
            out, first = run(pipe)
            breaks = sum(counters["graph_break"].values())
            graphs = counters["stats"]["unique_graphs"]
            times = [run(pipe)[1] for _ in range(args.repeats)]
            if mode == "eager":
                eager_out = out
            stats = accel.stats(pipe) if preset != "dense" else {}
            rows.append(dict(preset=preset, mode=mode, first_s=first, time_s=statistics.median(times),
                             graph_breaks=breaks, graphs=graphs, sparse_calls=stats.get("sparse", 0),
                             max_diff_vs_eager=float((out - eager_out).abs().max())))  # fmt: skip
            print(rows[-1], flush=True)

    base = {r["preset"]: r["time_s"] for r in rows if r["mode"] == "eager"}
    dense_eager = base["dense"]
    lines = [
        f"# Compiled vs eager accelerated tiny Wan on {args.device}",
        "",
        f"{args.height}x{args.width} px, {args.frames} frames = {tokens} tokens; {args.layers} layers x {args.heads} "
        f"heads x {args.head_dim}; {args.steps} steps with guidance (2 forwards per step); radial with "
        "dense_layers=0, dense_step_fraction=0.25, min_speedup=0, default 128-token blocks and backend (flex on CPU). "
        "Compiled = regional (`compile_repeated_blocks`, Inductor), as `--compile`. `first s` includes compilation; "
        f"`time s` is the median of {args.repeats} later runs. `graph breaks` and `graphs` are dynamo's counters "
        "over the whole first run.",
        "",
        "| preset | mode | first s | time s | x vs eager (same preset) | x vs eager dense | graph breaks | graphs "
        "| sparse calls | max diff vs eager |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['mode']} | {r['first_s']:.1f} | {r['time_s']:.2f} | "
            f"{base[r['preset']] / r['time_s']:.2f} | {dense_eager / r['time_s']:.2f} | {r['graph_breaks']} | "
            f"{r['graphs']} | {r['sparse_calls']} | {r['max_diff_vs_eager']:.1e} |"
        )
    env = environment(args.device)
    lines += ["", f"Environment: {env}", ""]
    write_results("compile", args.device, None, {"args": vars(args), "env": env, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
