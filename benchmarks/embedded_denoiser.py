"""How far is the embedded model's denoiser from the optimal one, where sampling decides an object's track?

For a clip of one object, noised to ``x_t = (1 - s) x_0 + s e``, three estimates of where the object is, each read
as the chance of an object on a cell (``<x0_hat - z_bg, d> / |d|^2``, ``d = z_obj - z_bg``), and scored two ways:
``on true cells``, the mean chance on the cells the object truly occupies; ``share``, per latent frame, the part of
the frame's summed chance (negative chances read as 0) that lies on its true cell (1: found, 1/cells: no idea). An
estimate that raises the chance everywhere scores high on the first and low on the second. The estimates:

- ``exact``: the optimal denoiser ``E[x_0 | x_t, prompt]`` over whole tracks (accel.embedded.posterior): it pools the
  evidence of every frame along each possible track;
- ``one frame``: the best any estimate can do from one latent frame alone (one object, every cell equally likely:
  a softmax over the frame's cells of the matched-filter evidence);
- ``model``: the trained transformer's own ``x_t - s v(x_t)``.

A model that tells one consistent track (motion) from noise must beat ``one frame`` by pooling frames; one that
denoises each frame on its own can at best match it, and its samples put the object in each frame independently
(objects that jump between cells).

    python benchmarks/embedded_denoiser.py [--model PATH]     # about 3 minutes on 2 CPU cores
    python benchmarks/embedded_denoiser.py --model /tmp/probe --sizes 64x17 --out /tmp/probe_denoiser   # 15 s
Writes benchmarks/results/embedded_denoiser_cpu.{json,md} (``--out``: another name there, or a path outside).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS  # noqa: E402

SIGMAS = (0.8, 0.9, 0.95, 0.97, 0.98)
SIZES = ((64, 17), (128, 33))  # a training bucket and the default render
ESTIMATES = ("exact", "one frame", "model")
MOTIONS = ("moving left", "moving right", "moving up", "moving down", "bouncing")


def canvas_and_frames(text: str) -> tuple[int, int]:
    """``"64x17"`` -> ``(64, 17)``: a square canvas (pixels, a multiple of the grammar's cell) and a frame count
    (2k + 1)."""
    from accel.embedded.grammar import CELL

    try:
        size, frames = (int(v) for v in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not SIZExFRAMES, e.g. 64x17") from None
    if size <= 0 or size % CELL or frames <= 0 or frames % 2 == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: size must be a multiple of {CELL} and frames 2k+1, e.g. 64x17")
    return size, frames


def scenes(n: int):
    from accel.embedded.grammar import COLOURS, SHAPES, SPEEDS, Scene

    rng = random.Random(0)
    return [
        Scene(rng.choice(list(COLOURS)), rng.choice(SHAPES), MOTIONS[i % len(MOTIONS)], 1, rng.choice(list(SPEEDS)))
        for i in range(n)
    ]


@torch.no_grad()
def measure(pipe, size: int, frames: int, sigma: float, clips) -> dict[str, float]:
    from accel.embedded import posterior
    from accel.embedded.grammar import clip_tracks, latent_frame, render_clip
    from accel.embedded.model import encode_prompts

    vae, latents, cells = pipe.vae, latent_frame(frames - 1) + 1, size // 8
    sums = {f"{k} {m}": 0.0 for k in ESTIMATES for m in ("on true cells", "share")}
    for i, scene in enumerate(clips):
        seed = 1000 + i
        x0 = vae.encode(render_clip(scene, frames, size, seed)[None]).latent_dist.mode()[0]
        tracks = clip_tracks(scene, frames, size, seed)
        true = posterior.occupancy(tracks, latents, cells)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(i))
        xt = (1 - sigma) * x0 + sigma * noise
        z_bg, z_obj = posterior.cell_latents(vae, scene)
        gain = posterior.evidence(xt, sigma, z_bg, z_obj)  # the posterior's per-cell evidence, over each frame alone
        one_frame = gain.flatten(1).softmax(1).view_as(gain)
        v = pipe.transformer(xt[None], torch.tensor([sigma * 1000]), encode_prompts(pipe, [scene.prompt]))[0][0]
        exact = posterior.object_chance(posterior.posterior_mean(vae, scene, tracks, xt, sigma), z_bg, z_obj)
        model = posterior.object_chance(xt - sigma * v, z_bg, z_obj)
        for name, chance in (("exact", exact), ("one frame", one_frame), ("model", model)):
            mass = chance.clamp_min(0).flatten(1)
            sums[f"{name} on true cells"] += float(chance[true].mean())
            sums[f"{name} share"] += float(((mass * true.flatten(1)).sum(1) / mass.sum(1).clamp_min(1e-9)).mean())
    return {k: round(v / len(clips), 3) for k, v in sums.items()}


def main(argv=None) -> None:
    from accel.embedded import load_shapes_wan

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None, help="pipeline folder (default: the shipped shapes-wan)")
    ap.add_argument("--clips", type=int, default=10)
    ap.add_argument("--out", default="embedded_denoiser_cpu", help="name under benchmarks/results, or a path")
    ap.add_argument(
        "--sizes", nargs="+", type=canvas_and_frames, default=list(SIZES), help="SIZExFRAMES, e.g. 64x17 (a probe)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    pipe = load_shapes_wan(path=args.model)
    clips = scenes(args.clips)
    rows = []
    for size, frames in args.sizes:
        for sigma in SIGMAS:
            r = {"size": size, "frames": frames, "sigma": sigma, **measure(pipe, size, frames, sigma, clips)}
            rows.append(r)
            print(r, flush=True)
    model = str(args.model) if args.model else "shapes-wan (shipped)"
    lines = [
        f"# Where is the object? The embedded model's denoiser against the optimal one ({model})",
        "",
        f"{args.clips} single-object clips ({', '.join(MOTIONS)}; seeded), noised at each sigma. Three estimates "
        "of where the object is: `exact` pools every frame along each possible track (the optimal denoiser), "
        "`one frame` is the best from one latent frame alone, `model` is the transformer's own estimate.",
        "",
        "Each cell: mean chance of an object on the cells it truly occupies / share of each frame's predicted object "
        "mass that lies on its true cell (1: found; 1/cells: no idea). The share is the fair score: raising the "
        "chance everywhere raises the first number, not the second.",
        "",
        "| size | sigma | exact (all frames) | one frame alone | model |",
        "|---|---|---|---|---|",
        *[
            f"| {r['size']}x{r['size']}x{r['frames']} | {r['sigma']} | "
            + " | ".join(f"{r[k + ' on true cells']:.3f} / {r[k + ' share']:.3f}" for k in ESTIMATES)
            + " |"
            for r in rows
        ],
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{args.out}.json").write_text(json.dumps({"model": model, "rows": rows}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
