"""The exact denoiser of the procedural clips, ``E[x_0 | x_t, prompt]``: the oracle a trained model is measured against.

Flow matching regresses the velocity ``v = e - x_0`` of one clip ``x_0`` and one noise ``e``. What the model learns
is the conditional mean ``E[v | x_t] = (x_t - E[x_0 | x_t]) / s``, where ``x_t = (1 - s) x_0 + s e``. For these clips
that mean is computable:
- a prompt fixes everything but the objects' random track (start cell, row or column, bounce phase);
- a clip's latent is the background cell's latent ``z_bg`` everywhere, plus ``d = z_obj - z_bg`` at each object cell
  (the VAE is linear per cell).

So over candidate tracks ``h`` (occupancy ``O_h`` ``[L, rows, cols]``, 0/1):

    log p(h | x_t) = log prior(h) + (1 - s) / s^2 * sum_cells O_h * <x_t - (1 - s) z_bg, d>  (+ const)

(every candidate has the same number of object cells, so ``|x_0|^2`` is the same for all), and
``E[x_0 | x_t] = z_bg + (sum_h p(h | x_t) O_h) d``. It pools the evidence of every frame along each track: at sigma
0.95 it finds the object where no single frame can (benchmarks/embedded_denoiser.py measures a model against it).
The local branch ``experiment/exact-targets`` also trained on it (a Rao-Blackwellised target: same minimiser, less
variance); see the README.

The candidates are the distinct tracks of ``PRIOR_SAMPLES`` seeded draws from the grammar's own track sampler
(their counts are the prior), plus the clip's true track.
"""

from __future__ import annotations

import functools
import random

import numpy as np
import torch

from .grammar import CELL, Scene, _cell_mask, _tracks

PRIOR_SAMPLES = 2048


@functools.lru_cache(maxsize=512)
def track_prior(motion: str, count: int, speed: str, latents: int, cells: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct tracks of a scene kind as occupancy ``[U, latents, cells, cells]`` (bool) and log prior ``[U]``
    (float64), from ``PRIOR_SAMPLES`` seeded draws of the grammar's track sampler."""
    scene = Scene("red", "circle", motion, count, speed)
    rng = random.Random(f"{motion}|{count}|{speed}|{latents}|{cells}")
    seen: dict[bytes, int] = {}
    occ = []
    for _ in range(PRIOR_SAMPLES):
        o = occupancy(_tracks(scene, latents, cells, rng), latents, cells)
        key = o.numpy().tobytes()
        if key in seen:
            occ[seen[key]][1] += 1
        else:
            seen[key] = len(occ)
            occ.append([o, 1])
    counts = torch.tensor([c for _, c in occ], dtype=torch.float64)
    return torch.stack([o for o, _ in occ]), (counts / counts.sum()).log()


def occupancy(tracks: list[list[tuple[int, int]]], latents: int, cells: int) -> torch.Tensor:
    """``[latents, cells, cells]`` bool: True where an object is (tracks of ``(column, row)`` per latent frame)."""
    o = np.zeros((latents, cells, cells), dtype=bool)
    for track in tracks:
        xs, ys = zip(*track, strict=True)
        o[np.arange(latents), ys, xs] = True
    return torch.from_numpy(o)


def cell_latents(vae, scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent ``[K]`` of a background cell and of an object cell of ``scene`` (the VAE is linear per cell)."""
    from .grammar import BACKGROUNDS, COLOURS

    bg = torch.tensor(BACKGROUNDS[scene.background]).view(3, 1, 1)
    fg = torch.tensor(COLOURS[scene.colour]).view(3, 1, 1)
    cells = torch.cat([bg.expand(3, CELL, CELL), bg + (fg - bg) * _cell_mask(scene.shape)], dim=2)  # [3, 8, 16]
    z = vae.encode((cells * 2 - 1)[None, :, None]).latent_dist.mode()  # one frame -> one latent frame
    return z[0, :, 0, 0, 0], z[0, :, 0, 0, 1]


@torch.no_grad()
def posterior_mean(vae, scene: Scene, true_tracks, xt: torch.Tensor, s: float) -> torch.Tensor:
    """``E[x_0 | x_t]`` for one clip of ``scene``: ``xt`` ``[K, L, rows, cols]`` (square), ``s`` its sigma in (0, 1),
    ``true_tracks`` the clip's own tracks (always a candidate). Returns ``[K, L, rows, cols]``."""
    k, latents, cells, _ = xt.shape
    occ, log_prior = track_prior(scene.motion, scene.count, scene.speed, latents, cells)
    true = occupancy(true_tracks, latents, cells)
    if not (occ == true).flatten(1).all(1).any():
        occ = torch.cat([occ, true[None]])
        log_prior = torch.cat([log_prior, torch.tensor([1.0 / PRIOR_SAMPLES], dtype=torch.float64).log()])
    z_bg, z_obj = (z.double() for z in cell_latents(vae, scene))
    flat = occ.flatten(1).to(torch.float64)
    p = torch.softmax(flat @ evidence(xt.double(), s, z_bg, z_obj).flatten() + log_prior, 0)
    prob = (p @ flat).view(latents, cells, cells)  # chance of an object at each cell
    return (z_bg.view(k, 1, 1, 1) + prob[None] * (z_obj - z_bg).view(k, 1, 1, 1)).to(xt.dtype)


def evidence(xt: torch.Tensor, s: float, z_bg: torch.Tensor, z_obj: torch.Tensor) -> torch.Tensor:
    """Per cell of ``xt`` ``[K, L, rows, cols]``, the log-likelihood gain of "object here" over "background here":
    ``(1 - s) / s^2 * <x_t - (1 - s) z_bg, z_obj - z_bg>`` (the posterior sums it along each track)."""
    d = (z_obj - z_bg).view(-1, 1, 1, 1)
    return ((xt - (1 - s) * z_bg.view(-1, 1, 1, 1)) * d).sum(0) * ((1 - s) / s**2)


def object_chance(z: torch.Tensor, z_bg: torch.Tensor, z_obj: torch.Tensor) -> torch.Tensor:
    """How much of an object each cell of a latent ``z`` ``[K, L, rows, cols]`` holds: its projection on
    ``z_obj - z_bg`` from ``z_bg`` (0: background, 1: object; a posterior mean gives the chance of an object)."""
    d = (z_obj - z_bg).view(-1, 1, 1, 1)
    return ((z - z_bg.view(-1, 1, 1, 1)) * d).sum(0) / (d * d).sum()
