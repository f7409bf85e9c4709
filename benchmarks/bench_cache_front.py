"""The caching front: our feature cache (fixed and adaptive schedules) against diffusers' own caches and cache-dit.

    python benchmarks/bench_cache_front.py embedded            # the embedded model, 2 held-out prompts, 3 rounds
    python benchmarks/bench_cache_front.py long --prompts 1 --rounds 2 --only ...   # tiny random Wan, 8,580 tokens
    python benchmarks/bench_cache_front.py embedded --only ours-default,ours-w2-t0.2,cache-dit-ts-0.24

Every configuration renders the same prompts with the same seeds. Quality is exact (deterministic): PSNR and SSIM of
the frames (embedded; latents for ``long``, whose weights are random) against the uncached run, worst and mean over
prompts, and the read-back attributes of the embedded model's frames. Speed is counted two ways:

- **block forwards**: how many transformer blocks ran their self-attention (a forward hook on every block's
  ``attn1.to_q``), summed over steps, guidance branches and prompts; dense runs every block of every forward;
- **wall time**: ``--rounds`` rounds, each rendering every configuration once per prompt in a rotated order (so
  machine load hits all alike); the speed-up is the median over rounds of (dense seconds / configuration seconds).

Peers: diffusers' ``TaylorSeerCacheConfig`` (hooked on Wan's attn1/attn2/ffn: its default patterns hook nothing on
Wan), ``FirstBlockCacheConfig``, ``MagCacheConfig`` (ratios calibrated first on a calibration prompt, as its docs
say), and cache-dit's DBCache (F1B0, its other settings at their defaults) with and without its TaylorSeer
calibrator. cache-dit is a benchmark-only dependency (``pip install -e .[bench]``); the package never imports it.

Progress is checkpointed after every render (``--checkpoint``, default under /tmp): a run that is stopped resumes
where it was. Writes benchmarks/results/cache_front_<mode>_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import environment, write_results  # noqa: E402

WAN_CACHE_MODULES = [r"blocks\.\d+\.attn1", r"blocks\.\d+\.attn2", r"blocks\.\d+\.ffn"]


def configurations(steps: int) -> dict[str, tuple[str, dict]]:
    """name -> (kind, settings). Kinds: dense, ours, diffusers-taylorseer, diffusers-fbc, diffusers-mag, cache-dit."""
    c: dict[str, tuple[str, dict]] = {"dense": ("dense", {}), "ours-default": ("ours", {})}
    for n in (2, 3, 5):  # the fixed schedule, TaylorSeer-Wan's published warm-up of 1 step
        c[f"ours-interval{n}"] = ("ours", {"threshold": None, "interval": n})
    adaptive = {  # ours-default is Wan's: change signal, 0.24, 8 warm-up steps, differences over step index
        "w8-change-o0-t0.08": {"warmup_steps": 8, "threshold": 0.08, "order": 0},
        "w8-change-t0.16": {"warmup_steps": 8, "threshold": 0.16},
        "w8-change-o0-t0.3": {"warmup_steps": 8, "threshold": 0.3, "order": 0},
        "w8-forecast-t0.12": {"warmup_steps": 8, "threshold": 0.12, "signal": "forecast", "distance": "sigma"},
        "w4-change-t0.3": {"warmup_steps": 4, "threshold": 0.3},
        "w2-forecast-t0.3-i8": {
            "warmup_steps": 2,
            "threshold": 0.3,
            "interval": 8,
            "signal": "forecast",
            "distance": "sigma",
        },  # fmt: skip
    }
    for name, settings in adaptive.items():
        c[f"ours-{name}"] = ("ours", settings)
    c["diffusers-taylorseer-5"] = ("diffusers-taylorseer", {"cache_interval": 5})
    for t in (0.05, 0.1, 0.2):
        c[f"diffusers-fbc-{t}"] = ("diffusers-fbc", {"threshold": t})
    for t in (0.06, 0.12, 0.24):
        c[f"diffusers-mag-{t}"] = ("diffusers-mag", {"threshold": t, "num_inference_steps": steps})
    for t in (0.08, 0.16, 0.24, 0.5):
        c[f"cache-dit-ts-{t}"] = ("cache-dit", {"threshold": t, "taylorseer": True})
    for t in (0.08, 0.24):
        c[f"cache-dit-{t}"] = ("cache-dit", {"threshold": t, "taylorseer": False})
    return c


def install(pipe, kind: str, settings: dict, mag_ratios: list[float] | None):
    """Install one configuration on ``pipe``; returns the function that takes it off again."""
    import accel

    if kind == "dense":
        return lambda: None
    if kind == "ours":
        accel.accelerate(pipe, "taylorseer", **settings)
        return lambda: accel.disable(pipe)
    if kind.startswith("diffusers-"):
        from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

        if kind == "diffusers-taylorseer":
            cfg = TaylorSeerCacheConfig(cache_identifiers=WAN_CACHE_MODULES, taylor_factors_dtype=torch.float32,
                                        **settings)  # fmt: skip
        elif kind == "diffusers-fbc":
            cfg = FirstBlockCacheConfig(**settings)
        else:
            cfg = MagCacheConfig(mag_ratios=mag_ratios, **settings)
        pipe.transformer.enable_cache(cfg)
        return pipe.transformer.disable_cache
    if kind == "cache-dit":
        import cache_dit
        from cache_dit import DBCacheConfig, TaylorSeerCalibratorConfig

        calibrator = TaylorSeerCalibratorConfig(taylorseer_order=1) if settings["taylorseer"] else None
        cache_dit.enable_cache(
            pipe,
            cache_config=DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0,
                                       residual_diff_threshold=settings["threshold"]),
            calibrator_config=calibrator,
        )  # fmt: skip
        return lambda: cache_dit.disable_cache(pipe)
    raise ValueError(kind)


def calibrate_mag(pipe, render, steps: int) -> list[float]:
    """MagCache's magnitude ratios for this model, from one calibration render (the cond branch's list)."""
    from diffusers.hooks import MagCacheConfig

    pipe.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            render()
    finally:
        pipe.transformer.disable_cache()
    lists = [line for line in buf.getvalue().splitlines() if line.startswith("[") and line.endswith("]")]
    if not lists:
        raise RuntimeError("MagCache calibration printed no ratios")
    return [float(x) for x in json.loads(lists[0])]


class BlockCounter:
    """Counts blocks whose self-attention ran: a forward hook on each block's ``attn1.to_q``."""

    def __init__(self, transformer):
        self.count = 0
        self.handles = [b.attn1.to_q.register_forward_hook(self._hit) for b in transformer.blocks]

    def _hit(self, *_):
        self.count += 1


def setup(mode: str):
    """(pipe, prompts, call kwargs, to_tensor, readback) for a mode."""
    if mode == "embedded":
        from accel.embedded import load_shapes_wan
        from accel.embedded.model import MAX_TEXT_TOKENS, RENDER
        from accel.embedded.readback import held_out_prompts

        pipe = load_shapes_wan()
        kwargs = {**RENDER, "max_sequence_length": MAX_TEXT_TOKENS, "output_type": "np"}
        return pipe, kwargs, lambda n: held_out_prompts(n), "a blue square moving up"
    from accel.testing import tiny_wan_pipeline

    pipe = tiny_wan_pipeline(num_layers=4, num_heads=2, head_dim=64)
    kwargs = dict(height=480, width=416, num_frames=41, num_inference_steps=20, max_sequence_length=16,
                  negative_prompt="w9", output_type="latent")  # fmt: skip
    return pipe, kwargs, lambda n: [f"w{3 + i} w{20 + i} w{40 + i}" for i in range(n)], "w50 w51"


def main(argv=None) -> None:
    from accel.testing.metrics import psnr, ssim

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["embedded", "long"])
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="wall-time rounds (the first also measures quality)")
    ap.add_argument("--only", default="", help="comma-separated configuration names (dense is always run)")
    ap.add_argument("--checkpoint", default=None, help="progress file (default /tmp/cache_front_<mode>.json)")
    ap.add_argument("--tag", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    pipe, kwargs, prompt_list, calibration_prompt = setup(args.mode)
    prompts = prompt_list(args.prompts)
    steps = kwargs["num_inference_steps"]
    configs = configurations(steps)
    if args.only:
        keep = {"dense", *args.only.split(",")}
        unknown = keep - configs.keys()
        if unknown:
            raise SystemExit(f"unknown configurations {sorted(unknown)}; known: {sorted(configs)}")
        configs = {k: v for k, v in configs.items() if k in keep}
    ckpt = Path(args.checkpoint or f"/tmp/cache_front_{args.mode}.json")
    state = json.loads(ckpt.read_text()) if ckpt.exists() else {}
    state.setdefault("times", {})  # "round/config/prompt" -> seconds
    state.setdefault("blocks", {})  # "config/prompt" -> block forwards
    state.setdefault("mag_ratios", None)

    def render(prompt: str, seed: int):
        out = pipe(prompt, generator=torch.Generator().manual_seed(seed), **kwargs).frames
        out = out[0] if args.mode == "embedded" else out
        return torch.as_tensor(out).float()

    if any(k == "diffusers-mag" for k, _ in configs.values()) and state["mag_ratios"] is None:
        state["mag_ratios"] = calibrate_mag(pipe, lambda: render(calibration_prompt, 1234), steps)
        ckpt.write_text(json.dumps(state))
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in configs}
    counter = BlockCounter(pipe.transformer)
    names = list(configs)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            kind, settings = configs[name]
            for i, prompt in enumerate(prompts):
                key = f"{r}/{name}/{i}"
                if key in state["times"] and r > 0:
                    continue  # resumed: timed already (round 0 renders again: it keeps the frames)
                remove = install(pipe, kind, settings, state["mag_ratios"])
                counter.count = 0
                try:
                    t0 = time.perf_counter()
                    out = render(prompt, i)
                    seconds = time.perf_counter() - t0
                finally:
                    remove()
                if r == 0:
                    outputs[name].append(out)
                    state["blocks"][f"{name}/{i}"] = counter.count
                state["times"].setdefault(key, seconds)
                ckpt.write_text(json.dumps(state))
                print(f"round {r} {name:24s} prompt {i}: {seconds:6.2f} s, {counter.count} block forwards", flush=True)

    rows = []
    for name, (kind, settings) in configs.items():
        ref, outs = outputs["dense"], outputs[name]
        data = 1.0 if args.mode == "embedded" else None
        ps = [psnr(o, d, data) for o, d in zip(outs, ref, strict=True)]
        if args.mode == "embedded":  # frames (F, H, W, C) -> every channel of every frame one SSIM image
            ss = [ssim(o.permute(0, 3, 1, 2), d.permute(0, 3, 1, 2), 1.0) for o, d in zip(outs, ref, strict=True)]
        else:  # latents (B, C, F, H, W) -> frames as images
            ss = [ssim(o[0].transpose(0, 1), d[0].transpose(0, 1), None) for o, d in zip(outs, ref, strict=True)]
        blocks = sum(state["blocks"][f"{name}/{i}"] for i in range(len(prompts)))
        dense_blocks = sum(state["blocks"][f"dense/{i}"] for i in range(len(prompts)))
        ratios = []
        for r in range(args.rounds):
            t = sum(state["times"][f"{r}/{name}/{i}"] for i in range(len(prompts)))
            td = sum(state["times"][f"{r}/dense/{i}"] for i in range(len(prompts)))
            ratios.append(td / t)
        row = {
            "name": name, "kind": kind, "settings": settings,
            "block_forwards": blocks, "block_speedup": dense_blocks / blocks,
            "speedup": statistics.median(ratios), "speedup_rounds": ratios,
            "psnr_min": min(ps), "psnr_mean": statistics.mean(ps), "ssim_min": min(ss),
        }  # fmt: skip
        if args.mode == "embedded":
            from accel.embedded.readback import score

            row["readback"] = score(prompts, [o.numpy() for o in outs])
        rows.append(row)
    front = pareto(rows)
    for row in rows:
        row["on_front"] = row["name"] in front
    payload = {
        "environment": environment("cpu"), "mode": args.mode, "prompts": prompts, "call": kwargs,
        "rounds": args.rounds, "mag_ratios": state["mag_ratios"], "rows": rows,
    }  # fmt: skip
    write_results(f"cache_front_{args.mode}", "cpu", args.tag, payload, markdown(payload))


def pareto(rows: list[dict]) -> set[str]:
    """Names of the rows no other row beats on both block speed-up and worst-prompt PSNR (dense excluded)."""
    cand = [r for r in rows if r["kind"] != "dense"]
    return {
        r["name"]
        for r in cand
        if not any(
            o["block_speedup"] >= r["block_speedup"] and o["psnr_min"] >= r["psnr_min"] and o is not r
            and (o["block_speedup"] > r["block_speedup"] or o["psnr_min"] > r["psnr_min"])
            for o in cand
        )
    }  # fmt: skip


def markdown(payload: dict) -> str:
    rows = sorted(payload["rows"], key=lambda r: -r["block_speedup"])
    env = payload["environment"]
    what = "frames" if payload["mode"] == "embedded" else "output latents (random weights)"
    lines = [
        f"# Caching front ({payload['mode']}) on {env['device']}",
        "",
        f"torch {env['torch']}, diffusers {env['diffusers']}; {len(payload['prompts'])} prompts, same seeds; "
        f"{payload['rounds']} interleaved wall-time rounds. PSNR / SSIM of the {what} against the uncached run. "
        "Block speed-up: transformer blocks whose attention ran, dense / configuration (exact). Wall speed-up: "
        "median over rounds of dense / configuration seconds, the whole pipeline call (text encoder and VAE "
        "included). `*` = on the front (no other configuration has both more block speed-up and more worst-prompt "
        "PSNR). Written by `benchmarks/bench_cache_front.py`.",
        "",
        "| configuration | block forwards | block speed-up | wall speed-up (rounds) | PSNR min / mean dB | SSIM min |"
        + (" read-back colour / shape / motion |" if payload["mode"] == "embedded" else ""),
        "|---|---|---|---|---|---|" + ("---|" if payload["mode"] == "embedded" else ""),
    ]
    for r in rows:
        rounds = ", ".join(f"{x:.2f}" for x in r["speedup_rounds"])
        line = (
            f"| {'*' if r['on_front'] else ''}{r['name']} | {r['block_forwards']} | x{r['block_speedup']:.2f} | "
            f"x{r['speedup']:.2f} ({rounds}) | {r['psnr_min']:.2f} / {r['psnr_mean']:.2f} | {r['ssim_min']:.4f} |"
        )
        if "readback" in r:
            rb = r["readback"]
            line += f" {rb['colour']:.2f} / {rb['shape']:.2f} / {rb['motion']:.2f} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
