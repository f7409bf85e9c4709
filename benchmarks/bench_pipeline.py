"""Pipeline benchmark: a tiny offline Wan pipeline at a long sequence, dense vs accelerated presets.

    python -m benchmarks.bench_pipeline [--device cuda] [--presets radial draft]

The runs are the command line's harness (``accel.cli.compare.compare``, as ``diffusion-fast bench``): the same
prompt and seed dense and with each preset on one loaded pipeline, one warm-up run each (mask build, kernel
compile), then the median of --repeats timed runs; speed-up, attention-call counts, and quality of the output
latents against dense (PSNR over the dense latents' span, relative L2). The tiny model has random weights, so
quality numbers measure how far the approximation moves the computation, not visual quality. Results go to
benchmarks/results/pipeline_<device>[_<tag>].{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from accel.cli.compare import compare, finite
from accel.cli.models import EMBEDDED, RANDOM_MODEL
from accel.cli.parser import positive_int
from accel.cli.request import build_request
from accel.cli.runner import load
from accel.cli.sizes import token_grid
from benchmarks.common import environment, write_results

PROMPT = "a red fox running through snow"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--presets", nargs="*", default=["radial"])
    p.add_argument("--frames", type=positive_int, default=81)
    p.add_argument("--height", type=positive_int, default=480)
    p.add_argument("--width", type=positive_int, default=416)
    p.add_argument("--steps", type=positive_int, default=10)
    p.add_argument("--layers", type=positive_int, default=2)
    p.add_argument("--heads", type=positive_int, default=2)
    p.add_argument("--head-dim", type=positive_int, default=64)
    p.add_argument("--repeats", type=positive_int, default=1)
    p.add_argument("--tag", default=None)
    args = p.parse_args()

    base = EMBEDDED[RANDOM_MODEL]  # the random-weight Wan, resized by the flags
    model = dataclasses.replace(
        base,
        name=f"{base.family}-tiny-{args.layers}x{args.heads}x{args.head_dim}",
        config={**base.config, "num_layers": args.layers, "num_heads": args.heads, "head_dim": args.head_dim},
    )
    presets = ["dense", *dict.fromkeys(x for x in args.presets if x != "dense")]
    request, configs = build_request(
        model.source(),
        presets,
        device=args.device,
        height=args.height,
        width=args.width,
        frames=args.frames,
        steps=args.steps,
        negative_prompt="blurry",
        output_type="latent",
        call_extra={"max_sequence_length": 16},
    )
    layout = token_grid(model.spec, True, request.frames, request.height, request.width)
    tokens = layout.num_tokens
    pipe = load(request, quiet=True)
    print(f"{len(presets)} configurations, {tokens} tokens, {args.steps} steps, CFG, {request.device}", flush=True)
    rows, _ = compare(
        pipe,
        request,
        PROMPT,
        presets,
        configs,
        warmup=1,
        repeats=args.repeats,
        progress=lambda text: print(text, file=sys.stderr, flush=True),
    )

    results = []
    for row in rows:
        out = {
            "preset": row["preset"],
            "time_s": row["time_s"],
            "speedup": row["speedup"],
            "psnr_db": finite(row["psnr_db"]),
            "rel_l2": row["rel_l2"],
            "denoise_s": row["denoise_s"],
            "peak_memory_bytes": row["peak_memory_bytes"],
        }
        if row["stats"] is not None:
            out["attention_calls"] = {k: v for k, v in row["stats"].items() if v is not None}
            out["config"] = row["config"]
        results.append(out)
        psnr = "-" if out["psnr_db"] is None else f"{out['psnr_db']:.1f} dB"
        print(
            f"{out['preset']}: {out['time_s']:.2f} s  x{out['speedup']:.2f}  PSNR {psnr}  rel L2 {out['rel_l2']:.4f}"
            + (f"  calls {out['attention_calls']}" if "attention_calls" in out else ""),
            flush=True,
        )

    env = environment(request.device)
    config = {k: getattr(args, k) for k in ("frames", "height", "width", "steps", "layers", "heads", "head_dim")}
    config.update(tokens=tokens, dtype=str(request.dtype), guidance="CFG (2 forwards per step)")
    md = [
        f"# Pipeline benchmark on {env['device']}",
        "",
        f"Tiny random Wan ({args.layers} layers, {args.heads} heads x {args.head_dim}), {args.frames} frames "
        f"{args.height}x{args.width} = {tokens} tokens per self-attention, {args.steps} steps with CFG, "
        f"{request.dtype}. Median of {args.repeats} timed run(s) after one warm-up. Quality: output latents against "
        "the dense run (random weights: this measures how far the approximation moves the computation, not visual "
        "quality).",
        "",
        "| preset | time s | speed-up | latent PSNR dB | rel. L2 | sparse / dense attention calls | mean density |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        calls = r.get("attention_calls", {})
        quality = "-" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"
        md.append(
            f"| {r['preset']} | {r['time_s']:.2f} | {r['speedup']:.2f} | "
            f"{quality} | {r['rel_l2']:.4f} | "
            f"{calls.get('sparse', '-')} / {calls.get('dense', '-')} | "
            f"{calls.get('mean_sparse_density') or '-'} |"
        )
    write_results(
        "pipeline", args.device, args.tag, {"environment": env, "config": config, "rows": results}, "\n".join(md) + "\n"
    )


if __name__ == "__main__":
    main()
