"""Attention benchmark: dense SDPA vs block_sparse_attention at radial masks for realistic video layouts.

    python benchmarks/bench_attention.py                 # CPU: sdpa, gather and flex backends, 16k and 33k tokens
    python benchmarks/bench_attention.py --device cuda   # GPU: triton, flex and sdpa backends, Wan-size layouts

For each layout it times, in one run and side by side: torch SDPA (dense) and each backend with the radial mask in
interleaved rounds, then each backend with a full mask (its own dense time). Reported ratios:
- ``speed_vs_sdpa`` = t_sdpa / t_sparse, against the target 0.8 / density (issue 24);
- ``efficiency`` = speed_vs_sdpa x density: the backend's speed per kept block against SDPA's (target 0.85);
- ``t_sparse / t_own_dense`` against the target density + 0.1 (fixed cost at most 10% of dense).
Results go to benchmarks/results/attention_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from accel.attention_kernels import BlockMask, TokenLayout, block_sparse_attention, radial_mask

from benchmarks.common import bench, environment, interleaved, write_results

# name -> (latent frames, height tokens, width tokens, decay): Wan2.1 shapes at 16 px per token, 4x temporal.
LAYOUTS = {
    "wan 480x416x81": (21, 30, 26, 0.2),
    "wan 480x832x81": (21, 30, 52, 0.2),
    "wan 768x1280x69": (18, 48, 80, 0.2),
    "wan 720x1280x81": (21, 45, 80, 0.2),
}
CPU_LAYOUTS = ["wan 480x416x81", "wan 480x832x81"]
DENSE = "dense SDPA"  # its key among the timed functions (one backend is named "sdpa")
GPU_LAYOUTS = ["wan 480x832x81", "wan 768x1280x69", "wan 720x1280x81"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--layouts", nargs="*", default=None, choices=list(LAYOUTS))
    p.add_argument("--backends", nargs="*", default=None)
    p.add_argument("--heads", type=int, default=None, help="default: 2 on CPU, 12 (Wan 1.3B) on GPU")
    p.add_argument("--head-dim", type=int, default=None, help="default: 64 on CPU, 128 on GPU")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tag", default=None, help="suffix added to the device name in the result file names")
    args = p.parse_args()

    gpu = args.device.startswith("cuda")
    layouts = args.layouts or (GPU_LAYOUTS if gpu else CPU_LAYOUTS)
    backends = args.backends or (["triton", "sdpa", "flex"] if gpu else ["sdpa", "gather", "flex"])
    heads = args.heads or (12 if gpu else 2)
    head_dim = args.head_dim or (128 if gpu else 64)
    dtype = getattr(torch, args.dtype or ("bfloat16" if gpu else "float32"))

    rows = []
    for name in layouts:
        f, h, w, decay = LAYOUTS[name]
        layout = TokenLayout(f, h, w)
        s = layout.num_tokens
        mask = radial_mask(layout, 128, decay, sink=True, device=args.device)
        full = BlockMask.full(mask.num_q_blocks, mask.num_k_blocks, 128, device=args.device)
        g = torch.Generator(device=args.device).manual_seed(0)
        q, k, v = (torch.randn(1, s, heads, head_dim, device=args.device, dtype=dtype, generator=g) for _ in range(3))

        def sdpa(q=q, k=k, v=v):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

        sparse = {
            b: (lambda q=q, k=k, v=v, m=mask, b=b: block_sparse_attention(q, k, v, m, backend=b)) for b in backends
        }
        # Interleaved rounds (SDPA, then every backend, repeated): a machine whose speed drifts over minutes slows
        # all of a round alike, so per-round ratios compare like with like. Reported: medians over the rounds.
        times = interleaved({DENSE: sdpa, **sparse}, args.device, repeats=args.repeats)
        t_sdpa = statistics.median(times[DENSE])
        flops_dense = 4 * s * s * head_dim * heads
        for backend in backends:
            t_sparse = statistics.median(times[backend])
            ratio = statistics.median(a / b for a, b in zip(times[DENSE], times[backend], strict=True))
            t_own = bench(
                lambda q=q, k=k, v=v, m=full, b=backend: block_sparse_attention(q, k, v, m, backend=b),
                args.device,
                repeats=args.repeats,
            )
            row = {
                "layout": name,
                "tokens": s,
                "backend": backend,
                "density": round(mask.density, 4),
                "t_sdpa_s": t_sdpa,
                "t_sparse_s": t_sparse,
                "t_own_dense_s": t_own,
                "speed_vs_sdpa": ratio,
                "speed_vs_sdpa_best_round": max(a / b for a, b in zip(times[DENSE], times[backend], strict=True)),
                "rounds_sdpa_s": times[DENSE],
                "rounds_sparse_s": times[backend],
                "target_speed_vs_sdpa": 0.8 / mask.density,
                "efficiency": ratio * mask.density,
                "sparse_over_own_dense": t_sparse / t_own,
                "target_sparse_over_own_dense": mask.density + 0.1,
                "own_dense_tflops": flops_dense / t_own / 1e12,
                "sdpa_tflops": flops_dense / t_sdpa / 1e12,
            }
            rows.append(row)
            print(
                f"{name:16s} {s:6d} tok  {backend:7s} density {mask.density:.3f}  sdpa {t_sdpa:8.4f}s  "
                f"sparse {t_sparse:8.4f}s (x{row['speed_vs_sdpa']:.2f} vs sdpa, "
                f"target x{row['target_speed_vs_sdpa']:.2f})  own dense {t_own:8.4f}s "
                f"(ratio {row['sparse_over_own_dense']:.3f}, target {mask.density + 0.1:.3f})",
                flush=True,
            )

    env = environment(args.device)
    config = {"heads": heads, "head_dim": head_dim, "dtype": str(dtype), "block_size": 128, "repeats": args.repeats}
    md = [
        f"# Attention benchmark on {env['device']}",
        "",
        f"torch {env['torch']}, triton {env['triton']}; batch 1, {heads} heads x {head_dim}, {dtype}, radial masks "
        "(Wan defaults: decay 0.2, first-frame sink, 128-token blocks). Median of "
        f"{args.repeats} interleaved rounds (SDPA then every backend, each round); `x vs SDPA` = median over the "
        "rounds of t_SDPA / t_sparse (target 0.8/density); `eff` = x vs SDPA x density (speed per kept block "
        "against SDPA's, target 0.85); "
        "`sparse/own dense` = t_sparse / t_backend_full_mask (target density + 0.1).",
        "",
        "| layout | tokens | backend | density | SDPA s | sparse s | x vs SDPA | target | eff | own dense s | "
        "sparse/own dense | target | own dense TFLOP/s | SDPA TFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['layout']} | {r['tokens']} | {r['backend']} | {r['density']:.3f} | {r['t_sdpa_s']:.4f} | "
            f"{r['t_sparse_s']:.4f} | {r['speed_vs_sdpa']:.2f} | {r['target_speed_vs_sdpa']:.2f} | "
            f"{r['efficiency']:.2f} | "
            f"{r['t_own_dense_s']:.4f} | {r['sparse_over_own_dense']:.3f} | "
            f"{r['target_sparse_over_own_dense']:.3f} | {r['own_dense_tflops']:.3f} | {r['sdpa_tflops']:.3f} |"
        )
    # Each backend's efficiency against SDPA on this device (the estimate behind min_speedup: speed-up = efficiency /
    # density): the measured speed-up times the density. accel measures its own table on first use on a device
    # (accel.methods.efficiency, `diffusion-fast efficiency`); this line is the long-sequence check of it.
    eff: dict[str, list[float]] = {}
    for r in rows:
        eff.setdefault(r["backend"], []).append(r["speed_vs_sdpa"] * r["density"])
    summary = ", ".join(f"{b} {min(v):.2f}-{max(v):.2f}" for b, v in eff.items())
    print(f"efficiency vs SDPA (speed-up x density): {summary}")
    md += ["", f"Efficiency vs SDPA (speed-up x density, min-max): {summary}."]
    write_results(
        "attention", args.device, args.tag, {"environment": env, "config": config, "rows": rows}, "\n".join(md) + "\n"
    )


if __name__ == "__main__":
    main()
