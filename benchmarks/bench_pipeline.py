"""Pipeline benchmark: a tiny offline Wan pipeline at a long sequence, dense vs accelerated presets.

    python benchmarks/bench_pipeline.py [--device cuda] [--presets radial]

Same prompt and seed, run dense and with each preset in one process: wall time (median of --repeats after a
warm-up), speed-up, attention-call counts, and quality of the output latents against dense (PSNR, relative L2).
The tiny model has random weights, so quality numbers measure how far the approximation moves the computation,
not visual quality. Results go to benchmarks/results/pipeline_<device>.{json,md}.
"""

from __future__ import annotations

import argparse

import torch
from accel.pipelines.wan import WAN

import accel
from accel.testing import tiny_wan_pipeline
from accel.testing.metrics import psnr, relative_l2
from benchmarks.common import bench, environment, write_results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--presets", nargs="*", default=["radial"])
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=416)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--tag", default=None)
    args = p.parse_args()

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    pipe = tiny_wan_pipeline(num_layers=args.layers, num_heads=args.heads, head_dim=args.head_dim, dtype=dtype)
    pipe.to(args.device)
    call = dict(
        prompt="a red fox running through snow",
        negative_prompt="blurry",
        num_inference_steps=args.steps,
        height=args.height,
        width=args.width,
        num_frames=args.frames,
        max_sequence_length=16,
        output_type="latent",
    )
    tokens = WAN.token_count(args.frames, args.height, args.width)

    def render():
        return pipe(generator=torch.Generator(args.device).manual_seed(0), **call).frames

    dense = render()
    t_dense = bench(render, args.device, warmup=0, repeats=args.repeats)
    rows = [{"preset": "dense", "time_s": t_dense, "speedup": 1.0, "psnr_db": None, "rel_l2": 0.0}]
    print(f"dense: {t_dense:.2f} s ({tokens} tokens, {args.steps} steps with CFG)", flush=True)
    for preset in args.presets:
        accel.accelerate(pipe, preset)
        out = render()  # warm-up (mask build, kernel compile)
        accel.stats(pipe, reset=True)
        t = bench(render, args.device, warmup=0, repeats=args.repeats)
        st = accel.stats(pipe)
        cfg = accel.accel_config(pipe)
        accel.disable(pipe)
        row = {
            "preset": preset,
            "time_s": t,
            "speedup": t_dense / t,
            "psnr_db": psnr(out, dense),
            "rel_l2": relative_l2(out, dense),
            "attention_calls": {k: v for k, v in st.items() if v is not None},
            "config": repr(cfg),
        }
        rows.append(row)
        print(
            f"{preset}: {t:.2f} s  x{row['speedup']:.2f}  PSNR {row['psnr_db']:.1f} dB  rel L2 {row['rel_l2']:.4f}"
            f"  calls {row['attention_calls']}",
            flush=True,
        )

    env = environment(args.device)
    config = {k: getattr(args, k) for k in ("frames", "height", "width", "steps", "layers", "heads", "head_dim")}
    config.update(tokens=tokens, dtype=str(dtype), guidance="CFG (2 forwards per step)")
    md = [
        f"# Pipeline benchmark on {env['device']}",
        "",
        f"Tiny random Wan ({args.layers} layers, {args.heads} heads x {args.head_dim}), {args.frames} frames "
        f"{args.height}x{args.width} = {tokens} tokens per self-attention, {args.steps} steps with CFG, {dtype}. "
        "Quality: output latents against the dense run (random weights: this measures how far the approximation "
        "moves the computation, not visual quality).",
        "",
        "| preset | time s | speed-up | latent PSNR dB | rel. L2 | sparse / dense attention calls | mean density |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        calls = r.get("attention_calls", {})
        quality = "-" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"
        md.append(
            f"| {r['preset']} | {r['time_s']:.2f} | {r['speedup']:.2f} | "
            f"{quality} | {r['rel_l2']:.4f} | "
            f"{calls.get('sparse', '-')} / {calls.get('dense', '-')} | "
            f"{calls.get('mean_sparse_density') or '-'} |"
        )
    write_results(
        "pipeline", args.device, args.tag, {"environment": env, "config": config, "rows": rows}, "\n".join(md) + "\n"
    )


if __name__ == "__main__":
    main()
