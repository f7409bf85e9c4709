"""LTX-Video on the shared per-family checks (tests/models/harness.py), plus LTX's own facts: the layout (from the
transformer's num_frames/height/width arguments) matches the attention call, only ``attn1`` is routed, the I2V
pipeline's per-token timesteps resolve to steps, the token grid at the published resolution, generic defaults."""

import pytest
import torch
from accel.attention_kernels import TokenLayout
from accel.pipelines.spec import modules_matching
from PIL import Image

import accel
from tests.models.attention_spy import routed_calls
from tests.models.harness import SPARSE, accelerated_call, call, family_tests, resolved_config, spec_named

SPEC = spec_named("ltx")
globals().update(family_tests("ltx"))


def test_layout_matches_the_attention_call_and_only_attn1_is_routed(family, monkeypatch):
    pipe, ref = family
    seen = routed_calls(monkeypatch)
    out, s = accelerated_call(pipe, SPEC, "radial", SPARSE["radial"])
    steps, layers = SPEC.tiny_call["num_inference_steps"], len(pipe.transformer.transformer_blocks)
    # One routed call per attn1 and step: attn2 (cross-attention to the caption) never reaches the core.
    assert len(seen) == steps * layers
    for q_shape, k_shape, _, step, _ in seen:
        layout = step.layout
        # Batched CFG: [uncond; cond] in one call; 33 frames x 128 x 128 px -> 5 x 4 x 4 tokens, no text.
        assert layout == TokenLayout(5, 4, 4)
        assert q_shape[0] == 2 and q_shape[1] == layout.num_tokens == k_shape[1]
    assert s.get("fallback", 0) == 0 and s["sparse"] > 0
    assert not torch.equal(out, ref)
    attn1 = {id(m) for _, m in SPEC.self_attention_layers(pipe.transformer)}
    assert [n for n, m in pipe.transformer.named_modules() if id(m) in attn1] == [
        f"transformer_blocks.{i}.attn1" for i in range(layers)
    ]


def test_cache_modules_are_attention_and_feed_forward(family):
    pipe, _ = family
    names = [n for n, _ in modules_matching(pipe.transformer, SPEC.cache_module_patterns)]
    layers = len(pipe.transformer.transformer_blocks)
    assert sorted(names) == sorted(
        f"transformer_blocks.{i}.{m}" for i in range(layers) for m in ("attn1", "attn2", "ff")
    )
    assert len(SPEC.blocks(pipe.transformer)) == layers


def test_image_to_video_pipeline():
    """LTXImageToVideoPipeline: per-token timesteps ``[B, S]`` (0 on the conditioning frame) still resolve to the
    scheduler's steps (the dense warm-up is exactly the first step), attn1 goes sparse, disable restores."""
    pipe = SPEC.tiny_pipeline(image_to_video=True)
    assert type(pipe).__name__ == "LTXImageToVideoPipeline"
    image = Image.new("RGB", (128, 128), (120, 30, 200))
    ref = call(pipe, SPEC, image=image)
    accel.accelerate(pipe, "radial", **SPARSE["radial"])
    try:
        out = call(pipe, SPEC, image=image)
        s = accel.stats(pipe)
    finally:
        accel.disable(pipe)
    layers = len(pipe.transformer.transformer_blocks)
    assert s["dense:warmup_steps"] == 1 * layers  # dense_step_fraction 0.2 of 6 steps
    assert s["sparse"] == 5 * layers and s.get("fallback", 0) == 0, s
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    assert torch.equal(call(pipe, SPEC, image=image), ref)


def test_layout_needs_the_grid_arguments():
    t = None  # the grid comes from the call's arguments alone
    kw = dict(num_frames=5, height=4, width=6)
    assert SPEC.layout_from_inputs(t, (), kw) == TokenLayout(5, 4, 6)
    assert SPEC.layout_from_inputs(t, (None,) * 4 + (5, 4, 6), {}) == TokenLayout(5, 4, 6)
    with pytest.raises(ValueError, match="video_coords"):  # LTXConditionPipeline's call
        SPEC.layout_from_inputs(t, (), dict(video_coords=torch.zeros(1, 3, 120)))


def test_token_grid_at_published_resolutions():
    # LTXPipeline's defaults (512 x 704, 161 frames) and its docs example (480 x 704): VAE 32x spatial, 8x temporal.
    assert SPEC.token_grid(161, 512, 704) == TokenLayout(21, 16, 22)
    assert SPEC.token_count(161, 480, 704) == 21 * 15 * 22 == 6930
    assert SPEC.token_grid(121, 512, 768) == TokenLayout(16, 16, 24)


def test_generic_defaults_apply(family):
    """No published LTX settings: every method gets its generic defaults (accel/config.py)."""
    pipe, _ = family
    assert SPEC.defaults(pipe) == {}
    cfg = resolved_config(pipe, "radial+taylorseer")
    radial, ts = cfg.attention, cfg.cache
    assert (radial.decay, radial.dense_step_fraction, radial.dense_layers, radial.sink) == (1.0, 0.24, 1, False)
    assert (ts.interval, ts.order, ts.warmup_steps) == (5, 1, 1)
