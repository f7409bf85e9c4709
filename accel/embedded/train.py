"""Train the embedded model from scratch on procedural clips (reproduces ``accel/embedded/shapes_wan``).

    python -m accel.embedded.train                  # 2,000 steps, about 40 minutes on 2 CPU cores: the shipped folder
    python -m accel.embedded.train --steps 100 --out /tmp/shapes   # a short run

Flow matching as Wan trains: ``x_t = (1 - s) x_0 + s e`` with ``s`` drawn through Wan's shift
(``s = k u / (1 + (k - 1) u)``, ``u ~ U(0, 1)``, ``k = FLOW_SHIFT``), timestep ``1000 s``, the transformer regresses
the velocity ``e - x_0``. The tokenizer's T5 encoder trains with it; one prompt in ten is dropped to the empty
prompt so classifier-free guidance works (``negative_prompt=""`` is what the pipeline feeds). Text embeddings are
zero-padded to ``MAX_TEXT_TOKENS`` in most steps and to 128 or 512 in a few, so the pipeline's default
``max_sequence_length=512`` also works.

Clips come in buckets of canvas size and length (all with the shipped model's pixel scale): small canvases and
short clips are cheap and teach appearance and motion; full-size 33-frame clips (4,352 tokens) teach the default
render. Every batch is generated on the fly from a seeded RNG: the run is reproducible up to floating-point
reduction order. The weights saved are an exponential moving average (decay 0.995).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from pathlib import Path

import torch

from .grammar import render_clip, sample_scene
from .model import FLOW_SHIFT, MAX_TEXT_TOKENS, SHAPES_WAN_DIR, build_untrained, encode_prompts

# (canvas px, frames, batch) and the order steps take them in. The model has no absolute positions (Wan's RoPE is
# relative), so what it learns on a small canvas holds on a large one: most steps are cheap 64x64 clips (8x8 tokens
# per frame, many per batch), with 96x96 and the full 128x128x33 render size (4,352 tokens) mixed in.
BUCKETS = ((64, 9, 24), (64, 17, 12), (96, 17, 6), (128, 33, 1))
CYCLE = (0, 1, 0, 1, 2, 0, 3)
STEPS = 2000  # measured: 40.2 minutes on 2 CPU cores


def fit_vae(vae, seed: int = 123, n: int = 400) -> float:
    """Fit the VAE's projection (PCA of cells) to ``n`` training clips; returns the variance share kept."""
    rng = random.Random(seed)
    clips = torch.stack([render_clip(sample_scene(rng), 9, 64, seed=rng.randrange(1 << 30)) for _ in range(n)])
    return vae.fit(clips)


def batch(rng: random.Random, size: int, frames: int, n: int, drop: float = 0.1):
    scenes = [sample_scene(rng) for _ in range(n)]
    clips = torch.stack([render_clip(s, frames, size, seed=rng.randrange(1 << 30)) for s in scenes])
    prompts = ["" if rng.random() < drop else s.prompt for s in scenes]
    return clips, prompts


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=STEPS, help=f"optimizer steps (default {STEPS})")
    ap.add_argument("--minutes", type=float, default=None, help="stop early after this many minutes")
    ap.add_argument("--out", type=Path, default=SHAPES_WAN_DIR, help="pipeline folder to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-every", type=float, default=10.0, help="minutes between checkpoints")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipe = build_untrained(args.seed)
    kept = fit_vae(pipe.vae)
    print(f"VAE: {pipe.vae.config.components} components keep {kept:.6f} of the cells' variance", flush=True)
    model, text = pipe.transformer.train(), pipe.text_encoder.train()
    params = [*model.parameters(), *text.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    # state_dict tensors share storage with the parameters, so this map stays live as the optimizer steps.
    live = {**_named(model, "t."), **_named(text, "e.")}
    ema = {k: v.detach().clone() for k, v in live.items()}
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    budget = args.minutes * 60 if args.minutes is not None else math.inf
    start = time.perf_counter()
    last_save, step, samples, log = start, 0, 0, []
    warmup = 100
    while step < args.steps and (elapsed := time.perf_counter() - start) < budget:
        size, frames, n = BUCKETS[CYCLE[step % len(CYCLE)]]
        clips, prompts = batch(rng, size, frames, n)
        x0 = pipe.vae.encode(clips).latent_dist.sample()
        noise = torch.randn(x0.shape, generator=gen)
        u = torch.rand(n, generator=gen)
        s = FLOW_SHIFT * u / (1 + (FLOW_SHIFT - 1) * u)
        sv = s.view(-1, 1, 1, 1, 1)
        xt = (1 - sv) * x0 + sv * noise
        pad = rng.choices((MAX_TEXT_TOKENS, 128, 512), weights=(0.85, 0.1, 0.05))[0]
        emb = encode_prompts(pipe, prompts, pad)
        pred = model(xt, s * 1000, emb, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        # Linear warm-up, then cosine decay to 10% of the peak at the last step.
        frac = step / args.steps
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        decay = min(0.995, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in live.items():
                ema[k].lerp_(v.detach(), 1 - decay)
        step += 1
        samples += n
        log.append((round(elapsed, 1), step, size, frames, round(loss.item(), 4)))
        if step % 25 == 0:
            recent = [r[-1] for r in log[-25:]]
            print(f"{elapsed / 60:6.1f} min  step {step:5d}  samples {samples:6d}  loss {sum(recent) / 25:.4f}  "
                  f"lr {lr:.2e}", flush=True)  # fmt: skip
        if time.perf_counter() - last_save > args.save_every * 60:
            _save(pipe, ema, args, step, samples, time.perf_counter() - start, log)
            last_save = time.perf_counter()
    _save(pipe, ema, args, step, samples, time.perf_counter() - start, log)


def _named(module, prefix):
    return {prefix + k: v for k, v in module.state_dict().items() if v.dtype.is_floating_point}


def _save(pipe, ema, args, step, samples, seconds, log):
    """Write the EMA weights as a diffusers pipeline folder plus ``training.json`` (the run's record)."""
    out = copy.deepcopy(pipe)
    with torch.no_grad():
        for k, v in _named(out.transformer, "t.").items():
            v.copy_(ema[k])
        for k, v in _named(out.text_encoder, "e.").items():
            v.copy_(ema[k])
    out.transformer.eval()
    out.text_encoder.eval()
    out.save_pretrained(args.out)
    record = {
        "seconds": round(seconds, 1),
        "steps": step,
        "samples": samples,
        "seed": args.seed,
        "lr": args.lr,
        "threads": args.threads,
        "torch": torch.__version__,
        "buckets": BUCKETS,
        "cycle": CYCLE,
        "final_loss_mean_100": round(sum(r[-1] for r in log[-100:]) / max(1, len(log[-100:])), 4),
        "loss_every_25_steps": [r for r in log[::25]],
    }
    (Path(args.out) / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"saved {args.out} after {step} steps ({samples} clips, {seconds / 60:.1f} min)", flush=True)


if __name__ == "__main__":
    main()
