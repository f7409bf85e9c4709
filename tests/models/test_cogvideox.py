"""CogVideoX on the shared per-family checks (tests/models/harness.py), plus its own: the layout against the real
attention calls (1.0, 1.5 with its temporal patch and odd latent frame counts, image-to-video), the token grids at
the published resolutions, only the joint self-attention routed, and Re-ttention's published CogVideoX-2B settings.
"""

from types import SimpleNamespace

import pytest
import torch
from accel.attention_kernels import TokenLayout
from accel.pipelines.cogvideox import (
    COGVIDEOX,
    cogvideox_layout,
    tiny_cogvideox_i2v_pipeline,
    tiny_cogvideox_pipeline,
)

import accel
from accel.config import RettentionConfig
from accel.errors import UnsupportedModelError
from accel.methods.base import dense_steps
from accel.methods.rettention import RettentionMethod
from tests.models.attention_spy import observed_attention
from tests.models.harness import SPARSE, family_tests, output, resolved_config

globals().update(family_tests("cogvideox"))

SHORT = dict(COGVIDEOX.tiny_call, num_inference_steps=3)


def _stub(patch_size_t=None):
    """Just the config fields ``cogvideox_layout`` reads."""
    return SimpleNamespace(config=SimpleNamespace(patch_size=2, patch_size_t=patch_size_t))


def _layout_of(shape, text_len=226, patch_size_t=None):
    hs = torch.empty(shape, device="meta")
    text = torch.empty(shape[0], text_len, 4096, device="meta")
    return cogvideox_layout(_stub(patch_size_t), (), {"hidden_states": hs, "encoder_hidden_states": text})


def test_token_grid_at_published_resolutions():
    # CogVideoX-2B / 5B: 480x720, 49 frames -> 13 x 30 x 45 = 17,550 video tokens, + 226 text = 17,776 (text first).
    assert COGVIDEOX.token_grid(49, 480, 720) == TokenLayout(13, 30, 45)
    layout = _layout_of((2, 13, 16, 60, 90))
    assert layout == TokenLayout(13, 30, 45, 226, "first") and layout.num_tokens == 17_776
    # CogVideoX1.5-5B: 768x1360, 81 frames -> 21 latent frames, padded to 22 by the pipeline, / patch_size_t 2 =
    # 11 token frames of 48 x 85: 44,880 video tokens after the text.
    layout = _layout_of((2, 22, 16, 96, 170), patch_size_t=2)
    assert layout == TokenLayout(11, 48, 85, 226, "first") and layout.video_tokens == 44_880


def _check_calls(pipe, steps, **kw):
    """Run ``pipe`` untouched; every SDPA call of a self-attention module holds ``layout.num_tokens`` tokens."""
    with observed_attention(pipe, COGVIDEOX) as seen:
        pipe(generator=torch.Generator().manual_seed(0), **{**SHORT, "num_inference_steps": steps, **kw})
    layers = len(COGVIDEOX.self_attention_layers(pipe.transformer))
    # Batched guidance: one transformer forward per step, one call per layer, holding both branches.
    assert len(seen["layouts"]) == steps and len(seen["calls"]) == layers * steps
    for forward, (batch, _, seq, _) in seen["calls"]:
        assert batch == 2 and seq == seen["layouts"][forward].num_tokens
    return seen["layouts"][0]


def test_layout_matches_attention_calls(family):
    pipe, _ = family
    # 17 frames: 5 latent frames of 4 x 4 tokens, after the 16 padded text tokens.
    assert _check_calls(pipe, 2) == TokenLayout(5, 4, 4, 16, "first")


@pytest.fixture(scope="module")
def pipe15():
    return tiny_cogvideox_pipeline(version="1.5")


@pytest.mark.parametrize(("frames", "grid"), [(33, (5, 4, 4)), (17, (3, 4, 4))])
def test_layout_matches_attention_calls_15(pipe15, frames, grid):
    # 33 frames: 9 latent frames, padded to 10 by the pipeline, 5 token frames; 17 frames: 5 -> 6 -> 3.
    assert _check_calls(pipe15, 1, num_frames=frames) == TokenLayout(*grid, 16, "first")


def test_15_runs_sparse(pipe15):
    accel.accelerate(pipe15, "radial", **SPARSE["radial"])
    try:
        out = output(pipe15(generator=torch.Generator().manual_seed(0), **{**SHORT, "num_frames": 33}))
        s = accel.stats(pipe15)
    finally:
        accel.disable(pipe15)
    assert torch.isfinite(out).all()
    assert s.get("sparse", 0) > 0 and s.get("fallback", 0) == 0, s


@pytest.mark.parametrize(("version", "frames"), [("1.0", 5), ("1.5", 3)])
def test_image_to_video_layout_and_sparse(version, frames):
    from PIL import Image

    pipe = tiny_cogvideox_i2v_pipeline(version=version)
    image = Image.new("RGB", (64, 64), (90, 30, 200))
    # The image latents are concatenated on channels: the token grid is the text-to-video one (1.5: 17 frames, 5
    # latent frames padded to 6, 3 token frames; its ofs embedding changes nothing in the sequence).
    assert _check_calls(pipe, 1, image=image) == TokenLayout(frames, 4, 4, 16, "first")
    accel.accelerate(pipe, "rettention", **SPARSE["rettention"])
    try:
        out = output(pipe(generator=torch.Generator().manual_seed(0), image=image, **SHORT))
        s = accel.stats(pipe)
    finally:
        accel.disable(pipe)
    assert torch.isfinite(out).all()
    assert s.get("sparse", 0) > 0 and s.get("fallback", 0) == 0, s


def test_only_joint_self_attention_is_routed(family):
    pipe, _ = family
    names = [n for n, m in pipe.transformer.named_modules() if type(m).__name__ == "Attention"]
    # Every attention module of CogVideoX is a block's joint attn1 (there is no cross-attention) ...
    layers = COGVIDEOX.self_attention_layers(pipe.transformer)
    assert len(layers) == len(names) == len(pipe.transformer.transformer_blocks)
    accel.accelerate(pipe, "radial", **SPARSE["radial"])
    try:
        pipe(generator=torch.Generator().manual_seed(0), **SHORT)
        s = accel.stats(pipe)
    finally:
        accel.disable(pipe)
    # ... and only its calls are counted: one per layer and step (the T5 text encoder's attention is untouched).
    assert s.get("sparse", 0) + s.get("dense", 0) + s.get("fallback", 0) == len(names) * SHORT["num_inference_steps"]


def _rettention_config(pipe) -> RettentionConfig:
    return resolved_config(pipe, "rettention").attention


def test_published_rettention_schedule(family):
    pipe, _ = family
    cfg = _rettention_config(pipe)
    assert (cfg.dense_step_fraction, cfg.recalibrate_every, cfg.ratio_drift, cfg.dense_layers) == (0.3, 5, 0.04, 0)
    # Re-ttention's CogVideoX-2B schedule at 50 steps: 0-14 full only, recalibration at 15, 20, ..., 45.
    method = RettentionMethod(cfg)
    assert dense_steps(cfg.dense_step_fraction, 50) == 15
    assert [i for i in range(50) if method.is_recalibration(i, 50)] == list(range(15, 50, 5))


def test_published_rettention_mask(family):
    pipe, _ = family
    cfg = _rettention_config(pipe)
    # +-21 tokens of the within-frame index, in every frame; the text dense (the mask builder's rule for text).
    assert (cfg.window_tokens, cfg.window_frames) == (21, -1)


def test_lite_caching_is_refused_clearly(family):
    # CogVideoXBlock returns (hidden_states, encoder_hidden_states): the spec names no block list, so TaylorSeer's lite
    # mode (one residual over the block stack, blocks returning hidden_states) refuses instead of breaking a call.
    pipe, _ = family
    with pytest.raises(UnsupportedModelError, match="lite caching needs the transformer blocks"):
        accel.accelerate(pipe, "taylorseer", lite=True)
    assert not accel.is_accelerated(pipe)
