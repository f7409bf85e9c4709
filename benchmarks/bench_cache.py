"""Feature-cache benchmark on a tiny offline Wan pipeline.

    python benchmarks/bench_cache.py accuracy     # many steps, small grid: which expansion predicts best
    python benchmarks/bench_cache.py speed        # long sequence: wall time and quality vs dense

accuracy: at the same number of full steps, our TaylorSeer with differences over sigma (default), with
TaylorSeer's step-index expansion, and diffusers' built-in TaylorSeerCacheConfig (hooked on the same Wan modules:
its default patterns hook nothing on Wan), orders 0-2; error of the output latents against the uncached run.
speed: dense, taylorseer, radial+taylorseer and diffusers' TaylorSeer at the same number of full steps, at 16k tokens.
Results go to benchmarks/results/cache_<mode>_<device>.{json,md}. The model has random weights: errors measure how
far caching moves the computation, not visual quality.
"""

from __future__ import annotations

import argparse
import time

import torch
from accel.pipelines.wan import WAN

import accel
from accel.testing import tiny_wan_pipeline
from accel.testing.metrics import psnr, relative_l2
from benchmarks.common import environment, sync, write_results


def diffusers_taylorseer(pipe, interval, before, order):
    from diffusers.hooks import TaylorSeerCacheConfig

    cfg = TaylorSeerCacheConfig(
        cache_interval=interval,
        disable_cache_before_step=before,
        max_order=order,
        taylor_factors_dtype=torch.float32,
        cache_identifiers=list(WAN.cache_module_patterns),  # its defaults hook nothing on Wan
    )
    pipe.transformer.enable_cache(cfg)


def diffusers_full_steps(n, interval, before):
    return [s for s in range(n) if s < before or (s - before - 1) % interval == 0]


def ours_full_steps(n, interval, warmup):
    return [s for s in range(n) if s < warmup or (s - warmup) % interval == 0]


def timed(render, device):
    sync(device)
    t0 = time.perf_counter()
    out = render()
    sync(device)
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["accuracy", "speed"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--tag", default=None)
    args = p.parse_args()
    dev = args.device

    if args.mode == "accuracy":
        steps, interval, warmup = 30, 5, 2
        size = dict(height=128, width=128, num_frames=17)
        pipe = tiny_wan_pipeline(num_layers=4, num_heads=2, head_dim=32).to(dev)
    else:
        steps, interval, warmup = 10, 5, 1
        size = dict(height=480, width=416, num_frames=81)
        pipe = tiny_wan_pipeline(num_layers=4, num_heads=2, head_dim=64).to(dev)
    # diffusers computes steps < before and (s - before - 1) % interval == 0: before = warmup gives as many full
    # steps as ours with `warmup` warm-up steps (placement differs by one step).
    before = warmup
    assert len(diffusers_full_steps(steps, interval, before)) == len(ours_full_steps(steps, interval, warmup))
    call = dict(
        prompt="a red fox running through snow",
        negative_prompt="blurry",
        num_inference_steps=steps,
        max_sequence_length=16,
        output_type="latent",
        **size,
    )

    def render():
        return pipe(generator=torch.Generator(dev).manual_seed(0), **call).frames

    ref, t_ref = timed(render, dev)
    tokens = WAN.token_count(size["num_frames"], size["height"], size["width"])
    print(f"uncached: {t_ref:.2f} s, {tokens} tokens, {steps} steps with CFG", flush=True)
    rows = [{"method": "uncached", "order": None, "full_steps": steps, "time_s": t_ref, "rel_l2": 0.0, "psnr_db": None}]

    def record(method, order, full, out, t, extra=None):
        row = {
            "method": method,
            "order": order,
            "full_steps": full,
            "time_s": t,
            "speedup": t_ref / t,
            "rel_l2": relative_l2(out, ref),
            "psnr_db": psnr(out, ref),
            **(extra or {}),
        }
        rows.append(row)
        print(
            f"{method:28s} order {order}  full {full}/{steps}  {t:7.2f} s  x{row['speedup']:.2f}  "
            f"rel L2 {row['rel_l2']:.5f}  PSNR {row['psnr_db']:.2f} dB",
            flush=True,
        )

    n_full = len(ours_full_steps(steps, interval, warmup))
    orders = (0, 1, 2) if args.mode == "accuracy" else (1,)
    for order in orders:
        for distance in ("sigma", "step"):
            accel.accelerate(pipe, "taylorseer", interval=interval, warmup_steps=warmup, order=order, distance=distance)
            out, t = timed(render, dev)
            st = accel.stats(pipe)
            accel.disable(pipe)
            record(
                f"accel taylorseer ({distance})", order, n_full, out, t, {"cache_peak_bytes": st["cache_peak_bytes"]}
            )
        diffusers_taylorseer(pipe, interval, before, order)
        out, t = timed(render, dev)
        pipe.transformer.disable_cache()
        record("diffusers TaylorSeerCache", order, len(diffusers_full_steps(steps, interval, before)), out, t)

    if args.mode == "speed":
        accel.accelerate(pipe, "radial+taylorseer", interval=interval, warmup_steps=warmup)
        render()  # warm-up: compiles the sparse kernel for this shape
        accel.stats(pipe, reset=True)
        out, t = timed(render, dev)
        st = accel.stats(pipe)
        cfg = accel.accel_config(pipe)
        accel.disable(pipe)
        full = st["cache:computed"] // (2 * 4 * 3)  # branches x layers x modules
        record("accel radial+taylorseer", 1, full, out, t, {"stats": st, "config": repr(cfg)})

    env = environment(dev)
    md = [
        f"# Cache benchmark ({args.mode}) on {env['device']}",
        "",
        f"Tiny random Wan ({'4 layers, 2x32 heads' if args.mode == 'accuracy' else '4 layers, 2x64 heads'}), "
        f"{size['num_frames']} frames {size['height']}x{size['width']} = {tokens} tokens, {steps} steps with CFG, "
        f"interval {interval}, warm-up {warmup}. Error of the output latents against the uncached run (random weights: "
        "this measures how far caching moves the computation, not visual quality). diffusers' TaylorSeerCacheConfig is "
        "given the same Wan modules (attn1, attn2, ffn) and the same number of full steps.",
        "",
        "| method | order | full steps | time s | speed-up | rel. L2 vs uncached | PSNR dB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        quality = "-" if r["psnr_db"] is None else f"{r['psnr_db']:.2f}"
        md.append(
            f"| {r['method']} | {'-' if r['order'] is None else r['order']} | {r['full_steps']}/{steps} | "
            f"{r['time_s']:.2f} | {r.get('speedup', 1.0):.2f} | {r['rel_l2']:.5f} | {quality} |"
        )
    config = {"steps": steps, "interval": interval, "warmup": warmup, "tokens": tokens, **size}
    payload = {"environment": env, "config": config, "rows": rows}
    write_results(f"cache_{args.mode}", dev, args.tag, payload, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
