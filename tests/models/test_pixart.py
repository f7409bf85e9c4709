"""PixArt-Sigma / PixArt-Alpha on the shared per-family checks (tests/models/harness.py), plus PixArt's own facts: the
layout matches the attention call, only ``attn1`` is routed (through the processor's direct SDPA call), the token
grid at the released resolutions, and Re-ttention's published PixArt settings (schedule, band, density)."""

import types

import pytest
import torch
from accel.attention_kernels import TokenLayout, rettention_mask

import accel
from accel.methods.rettention import RettentionMethod
from tests.models.attention_spy import routed_calls
from tests.models.harness import SMALL, SPARSE, accelerated_call, call, family_tests, resolved_config, spec_named

SPEC = spec_named("pixart")
globals().update(family_tests("pixart"))  # radial and radial+taylorseer: refused (an image has one frame)


def test_layout_matches_the_attention_call_and_only_attn1_is_routed(family, monkeypatch):
    pipe, ref = family
    seen = routed_calls(monkeypatch)
    out, s = accelerated_call(pipe, SPEC, "rettention", SPARSE["rettention"])
    steps, layers = SPEC.tiny_call["num_inference_steps"], len(pipe.transformer.transformer_blocks)
    # One routed call per attn1 and step: attn2 (cross-attention to the caption) never reaches the core.
    assert len(seen) == steps * layers
    for q_shape, k_shape, _, step, _ in seen:
        layout = step.layout
        # Batched CFG: [uncond; cond] in one call; 128 x 192 px -> 16 x 24 latent -> 8 x 12 tokens, no text.
        assert layout == TokenLayout(1, 8, 12)
        assert q_shape[0] == 2 and q_shape[1] == layout.num_tokens == k_shape[1]
    assert s.get("fallback", 0) == 0 and s["sparse"] > 0
    assert not torch.equal(out, ref)
    attn1 = {id(m) for _, m in SPEC.self_attention_layers(pipe.transformer)}
    names = [n for n, m in pipe.transformer.named_modules() if id(m) in attn1]
    assert names == [f"transformer_blocks.{i}.attn1" for i in range(layers)]


def test_alpha_pipeline(monkeypatch):
    """PixArtAlphaPipeline (T5 max length 120 by default, same transformer) takes the sparse path too."""
    pipe = SPEC.tiny_pipeline(alpha=True)
    assert type(pipe).__name__ == "PixArtAlphaPipeline"
    ref = call(pipe, SPEC)
    accel.accelerate(pipe, "rettention", **SPARSE["rettention"], window_tokens=16)
    try:
        out = call(pipe, SPEC)
        s = accel.stats(pipe)
    finally:
        accel.disable(pipe)
    assert s["sparse"] > 0 and s.get("fallback", 0) == 0, s
    assert torch.isfinite(out).all()
    assert torch.equal(call(pipe, SPEC), ref)


def test_token_grid_at_released_resolutions():
    # reference/sparse-attention-methods.md table A: PixArt 1024^2 -> 64 x 64 = 4,096 tokens (512 model: 1,024).
    assert SPEC.token_grid(1, 1024, 1024) == TokenLayout(1, 64, 64)
    assert SPEC.token_count(1, 1024, 1024) == 4096
    assert SPEC.token_count(1, 512, 512) == 1024
    assert SPEC.token_grid(1, 768, 1344) == TokenLayout(1, 48, 84)  # an ASPECT_RATIO_1024_BIN entry


def test_published_rettention_schedule(family):
    """Re-ttention's PixArt script: 20 steps, full-only steps 0-4, recalibration at 5, 10 and 15."""
    pipe, _ = family
    cfg = resolved_config(pipe, "rettention").attention
    assert (cfg.dense_step_fraction, cfg.recalibrate_every, cfg.dense_layers, cfg.ratio_drift) == (0.25, 5, 0, 0.04)
    method = RettentionMethod(cfg)
    assert [i for i in range(20) if method.is_recalibration(i, 20)] == [5, 10, 15]
    assert [i for i in range(20) if method.requires_full(i, 20)] == [0, 1, 2, 3, 4, 5, 10, 15]


def test_published_rettention_schedule_runs(family):
    """The published schedule on a 20-step call: 5 warm-up steps, 3 recalibrations, 12 sparse steps per layer."""
    pipe, _ = family
    layers = len(pipe.transformer.transformer_blocks)
    accel.accelerate(pipe, "rettention", window_tokens=16, **SMALL)
    try:
        out = call(pipe, SPEC, num_inference_steps=20)
        s = accel.stats(pipe)
    finally:
        accel.disable(pipe)
    assert torch.isfinite(out).all()
    assert s["dense:warmup_steps"] == 5 * layers
    assert s["dense:recalibration"] == 3 * layers
    assert s["sparse"] == 12 * layers and s.get("fallback", 0) == 0, s


@pytest.mark.parametrize("sample_size, window", [(128, 64), (64, 16), (256, 256)])
def test_published_band_width_follows_the_checkpoint(sample_size, window):
    """The band is 3.125% of the native token count, halved (Re-ttention's rule): PixArt-1024 (sample_size 128)
    +-64 tokens, PixArt-512 +-16, PixArt-Sigma 2K +-256."""
    pipe = types.SimpleNamespace(transformer=types.SimpleNamespace(config=types.SimpleNamespace(
        sample_size=sample_size, patch_size=2)))  # fmt: skip
    rettention = SPEC.defaults(pipe)["rettention"]
    assert (rettention["window_tokens"], rettention["block_size"]) == (window, 64)


def test_published_band_is_the_default(family):
    pipe, _ = family
    cfg = resolved_config(pipe, "rettention").attention
    published = SPEC.defaults(pipe)["rettention"]
    assert (cfg.window_tokens, cfg.block_size) == (published["window_tokens"], published["block_size"])


def test_published_band_density():
    """Re-ttention's PixArt mask, |i - j| <= 64 over the 4,096 raster-ordered tokens (about 3.1%), as a block mask:
    it contains the band, and keeps 4.6% of the pairs with 64-token blocks (9.2% with 128-token blocks)."""
    layout = SPEC.token_grid(1, 1024, 1024)
    n = layout.num_tokens
    i = torch.arange(n)
    band = (i[:, None] - i[None, :]).abs() <= 64
    assert band.float().mean().item() == pytest.approx(0.0310, abs=5e-4)
    for block_size, density in ((64, 0.0464), (128, 0.0918)):
        mask = rettention_mask(layout, block_size, 64, 0)
        assert mask.density == pytest.approx(density, abs=5e-4)
        kept = mask.token_mask(n, n)[0, 0]
        assert bool(kept[band].all())  # every published pair is attended
