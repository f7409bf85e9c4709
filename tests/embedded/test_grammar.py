"""The prompt grammar, the procedural clips and the pixel-packing VAE of the embedded model."""

from __future__ import annotations

import random

import pytest
import torch

from accel.embedded.grammar import (
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    SHAPES,
    VOCABULARY,
    Scene,
    is_held_out,
    parse_prompt,
    render_clip,
    sample_scene,
)
from accel.embedded.pixel_vae import PixelPackVAE


def test_prompts_parse_back_to_their_scene():
    rng = random.Random(0)
    for _ in range(300):
        scene = sample_scene(rng)
        assert parse_prompt(scene.prompt) == scene
    assert parse_prompt("A Red circle, moving right!") == Scene("red", "circle", "moving right")
    assert parse_prompt("a red circle moving right") == Scene("red", "circle", "moving right")
    assert parse_prompt("a purple square bouncing quickly on a white background") == Scene(
        "purple", "square", "bouncing", 1, "quickly", "white"
    )
    assert parse_prompt("a cat on a sofa") is None


def test_training_never_samples_a_held_out_combination():
    rng = random.Random(1)
    assert not any(is_held_out(*sample_scene(rng).triple) for _ in range(2000))
    held = [sample_scene(rng, held_out=True) for _ in range(200)]
    assert all(is_held_out(*s.triple) for s in held)
    total = len(COLOURS) * len(SHAPES) * len(MOTIONS)
    n = sum(is_held_out(c, s, m) for c in COLOURS for s in SHAPES for m in MOTIONS)
    assert 0.08 < n / total < 0.2
    # Every colour, shape and motion still appears in training (only combinations are held out).
    train = {sample_scene(rng) for _ in range(3000)}
    assert {s.colour for s in train} == set(COLOURS) and {s.shape for s in train} == set(SHAPES)
    assert {s.motion for s in train} == set(MOTIONS) and {s.background for s in train} == set(BACKGROUNDS)


def test_the_tokenizer_knows_every_grammar_word():
    from accel.embedded.model import shapes_tokenizer

    tok = shapes_tokenizer()
    rng = random.Random(2)
    for _ in range(100):
        ids = tok(sample_scene(rng).prompt).input_ids
        assert tok.unk_token_id not in ids and ids[-1] == tok.eos_token_id
    assert len(tok) == len(VOCABULARY) + 3


def test_clips_are_seeded_and_in_range():
    scene = Scene("yellow", "triangle", "moving apart", count=2, background="blue")
    a, b = render_clip(scene, 17, 48, seed=3), render_clip(scene, 17, 48, seed=3)
    assert a.shape == (3, 17, 48, 48) and torch.equal(a, b)
    assert -1 <= float(a.min()) and float(a.max()) <= 1
    assert not torch.equal(a, render_clip(Scene("yellow", "circle", "moving left"), 17, 48, seed=4))
    with pytest.raises(ValueError, match="multiple of 8"):
        render_clip(scene, 9, 44)


def test_objects_fill_one_cell_and_move_between_latent_frames():
    """Each object is one token's 8x8 cell; frames packed into one latent frame show it in the same cell."""
    clip = render_clip(Scene("white", "square", "moving right", speed="quickly"), 9, 64, seed=0)
    fg = (clip[0] > 0).nonzero()  # (frame, y, x) of object pixels
    for f in range(9):
        ys, xs = fg[fg[:, 0] == f, 1], fg[fg[:, 0] == f, 2]
        assert ys.max() // 8 == ys.min() // 8 and xs.max() // 8 == xs.min() // 8  # inside one cell
    cell = [int(fg[fg[:, 0] == f, 2].min()) // 8 for f in range(9)]
    assert cell[1] == cell[2] and cell[3] == cell[4] and cell[2] == cell[1] and cell[3] == cell[1] + 1  # pairs
    assert cell == sorted(cell) and cell[-1] - cell[0] == 4  # quickly: one cell per latent frame


@pytest.mark.parametrize("frames", [1, 3, 9, 33])
def test_pixel_packing_round_trips_exactly(frames):
    vae = PixelPackVAE()  # packing only: 8x8 pixels x 2 frames x RGB = 384 channels
    x = torch.rand(2, 3, frames, 16, 24) * 2 - 1
    z = vae.encode(x).latent_dist.sample()
    assert z.shape == (2, 384, (frames - 1) // 2 + 1, 2, 3)
    assert torch.equal(vae.decode(z).sample, x)
    assert torch.equal(vae.decode(z, return_dict=False)[0], x)


def test_pixel_vae_packs_like_wan_groups_frames():
    """Latent frame 0 holds frame 0 alone; latent frame j holds frames 2j-1 and 2j; channels (t, rgb, dy, dx)."""
    vae = PixelPackVAE(scale_factor_spatial=2)
    x = torch.arange(3 * 5 * 2 * 2, dtype=torch.float32).view(1, 3, 5, 2, 2)
    z = vae.pack(x)
    assert z.shape == (1, 24, 3, 1, 1)
    # channel = ((t * 3 + c) * 2 + dy) * 2 + dx
    assert z[0, (1 * 3 + 2) * 4 + 1 * 2 + 0, 2, 0, 0] == x[0, 2, 4, 1, 0]  # second of pair 2 = frame 4
    assert z[0, (0 * 3 + 0) * 4 + 0, 1, 0, 0] == x[0, 0, 1, 0, 0]  # first of pair 1 = frame 1
    assert z[0, 0, 0, 0, 0] == z[0, 12, 0, 0, 0] == x[0, 0, 0, 0, 0]  # frame 0 packed twice
    with pytest.raises(ValueError, match="1 \\+ 2k frames"):
        vae.pack(torch.zeros(1, 3, 4, 2, 2))


def fitted_vae():
    rng = random.Random(0)
    vae = PixelPackVAE(components=12)
    kept = vae.fit(torch.stack([render_clip(sample_scene(rng), 9, 64, seed=i) for i in range(200)]))
    return vae, kept, rng


def test_fitted_projection_keeps_every_clip_exactly():
    """The clips' 8x8 cells span 12 dimensions (background colour; object colour times each shape's mask): 12
    principal components reconstruct unseen clips up to float rounding, at unit variance per channel."""
    vae, kept, rng = fitted_vae()
    assert kept > 1 - 1e-9
    clips = torch.stack([render_clip(sample_scene(rng), 17, 64, seed=1000 + i) for i in range(40)])
    z = vae.encode(clips).latent_dist.sample()
    assert z.shape == (40, 12, 9, 8, 8) and 0.5 < float(z.std()) < 1.5
    torch.testing.assert_close(vae.decode(z).sample, clips, rtol=0, atol=1e-4)


def test_fitted_vae_round_trips_through_a_folder(tmp_path):
    vae, _, _ = fitted_vae()
    vae.save_pretrained(tmp_path)
    again = PixelPackVAE.from_pretrained(tmp_path)
    assert again.config.z_dim == 12 and list(again.config.latents_std) == [1.0] * 12
    for name in ("basis", "mean", "scale"):
        assert torch.equal(getattr(again, name), getattr(vae, name))
