"""The exact denoiser of the procedural clips (accel/embedded/posterior.py) against a brute-force oracle."""

from __future__ import annotations

import pytest
import torch

from accel.embedded import posterior as P
from accel.embedded.grammar import Scene, clip_tracks, latent_frame, render_clip
from accel.embedded.model import LATENT_CHANNELS
from accel.embedded.pixel_vae import PixelPackVAE
from accel.embedded.train import fit_vae

FRAMES, SIZE = 5, 32  # 3 latent frames of 4x4 cells: few candidate tracks, fast


@pytest.fixture(scope="module")
def vae():
    v = PixelPackVAE(components=LATENT_CHANNELS)
    fit_vae(v, n=150)  # the training script's own fit, on fewer clips
    return v


SCENES = [
    Scene("red", "circle", "moving right"),
    Scene("white", "triangle", "bouncing", speed="quickly", background="blue"),
    Scene("yellow", "square", "moving apart", count=2, background="gray"),
]


@pytest.mark.parametrize("scene", SCENES, ids=lambda s: s.prompt)
def test_a_clip_is_background_plus_its_object_cells(vae, scene):
    """The latent of a rendered clip is z_bg everywhere plus (z_obj - z_bg) at its track's cells."""
    seed = 11
    x0 = vae.encode(render_clip(scene, FRAMES, SIZE, seed)[None]).latent_dist.mode()[0]
    cells, latents = SIZE // 8, latent_frame(FRAMES - 1) + 1
    occ = P.occupancy(clip_tracks(scene, FRAMES, SIZE, seed), latents, cells)
    z_bg, z_obj = P.cell_latents(vae, scene)
    rebuilt = z_bg.view(-1, 1, 1, 1) + occ[None] * (z_obj - z_bg).view(-1, 1, 1, 1)
    torch.testing.assert_close(rebuilt, x0, rtol=0, atol=1e-4)


@pytest.mark.parametrize("sigma", [0.3, 0.95, 0.995])
@pytest.mark.parametrize("scene", SCENES, ids=lambda s: s.prompt)
def test_posterior_mean_equals_brute_force(vae, scene, sigma):
    """Oracle: every candidate track rendered as a whole latent, weighted by prior x Gaussian likelihood of x_t."""
    seed = 5
    cells, latents = SIZE // 8, latent_frame(FRAMES - 1) + 1
    true = clip_tracks(scene, FRAMES, SIZE, seed)
    x0 = vae.encode(render_clip(scene, FRAMES, SIZE, seed)[None]).latent_dist.mode()[0]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    xt = (1 - sigma) * x0 + sigma * noise
    ours = P.posterior_mean(vae, scene, true, xt, sigma)

    occ, log_prior = P.track_prior(scene.motion, scene.count, scene.speed, latents, cells)
    z_bg, z_obj = (z.double() for z in P.cell_latents(vae, scene))
    candidates = z_bg.view(1, -1, 1, 1, 1) + occ[:, None].double() * (z_obj - z_bg).view(1, -1, 1, 1, 1)
    assert (occ == P.occupancy(true, latents, cells)).flatten(1).all(1).any()  # the true track is a candidate
    loglik = -((xt.double() - (1 - sigma) * candidates) ** 2).flatten(1).sum(1) / (2 * sigma**2)
    weights = torch.softmax(loglik + log_prior, 0)
    oracle = (weights.view(-1, 1, 1, 1, 1) * candidates).sum(0)
    torch.testing.assert_close(ours.double(), oracle, rtol=0, atol=1e-5)
    if sigma < 0.5:  # little noise: the posterior is the clip itself
        torch.testing.assert_close(ours, x0, rtol=0, atol=1e-4)


def test_prior_counts_are_the_track_sampler_s():
    """A directional single object: every start cell and row equally likely, one candidate each."""
    occ, log_prior = P.track_prior("moving right", 1, "quickly", 3, 4)
    # quickly: 1 cell per latent frame, 3 latent frames -> start in {0, 1}, row in {0..3}: 8 tracks
    assert occ.shape == (8, 3, 4, 4) and occ.flatten(1).sum(1).eq(3).all()
    torch.testing.assert_close(log_prior.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    assert float(log_prior.exp().max() / log_prior.exp().min()) < 1.4  # about uniform (2,048 draws)
