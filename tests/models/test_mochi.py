"""Mochi on the shared per-family checks (tests/models/harness.py), plus its own: the layout against the real
attention calls (one per batch item, each over the video and that item's valid text), the token grid at the
published resolution, only the joint self-attention routed, and Re-ttention's state kept per batch item."""

from types import SimpleNamespace

import pytest
import torch
from accel.attention_kernels import TokenLayout
from accel.pipelines.mochi import MOCHI, mochi_layout

import accel
from accel.errors import UnsupportedModelError
from tests.models.attention_spy import observed_attention
from tests.models.harness import SPARSE, family_tests

globals().update(family_tests("mochi"))

STEPS = 3
SHORT = dict(MOCHI.tiny_call, num_inference_steps=STEPS)


def test_token_grid_at_published_resolution():
    # Mochi 1: 480x848, 163 frames -> 28 latent frames (6x temporal) of 30 x 53 tokens = 44,520, + 256 text (last).
    assert MOCHI.token_grid(163, 480, 848) == TokenLayout(28, 30, 53)
    hs = torch.empty(2, 12, 28, 60, 106, device="meta")
    text = torch.empty(2, 256, 4096, device="meta")
    stub = SimpleNamespace(config=SimpleNamespace(patch_size=2))
    layout = mochi_layout(stub, (), {"hidden_states": hs, "encoder_hidden_states": text})
    assert layout == TokenLayout(28, 30, 53, 256, "last") and layout.video_tokens == 44_520


def _valid_text(pipe, prompt: str) -> int:
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=SHORT["max_sequence_length"], truncation=True)
    return sum(ids["attention_mask"])


def test_layout_matches_attention_calls(family):
    pipe, _ = family
    with observed_attention(pipe, MOCHI) as seen:
        pipe(generator=torch.Generator().manual_seed(0), **SHORT)
    layers = len(MOCHI.self_attention_layers(pipe.transformer))
    # 25 frames: 5 latent frames of 4 x 4 tokens, then the 16 padded text tokens.
    assert seen["layouts"] == [TokenLayout(5, 4, 4, 16, "last")] * STEPS
    # Batched guidance [negative, prompt]: per layer and step one call per item, over the video and that item's
    # valid text only, which the core maps onto the layout with fewer text tokens.
    valid = [_valid_text(pipe, SHORT["negative_prompt"]), _valid_text(pipe, SHORT["prompt"])]
    assert valid == [1, 3]
    assert [shape[2] for _, shape in seen["calls"]] == [80 + n for n in valid] * layers * STEPS
    assert all(shape[0] == 1 for _, shape in seen["calls"])


def test_only_joint_self_attention_is_routed(family):
    pipe, _ = family
    names = [n for n, m in pipe.transformer.named_modules() if type(m).__name__ == "MochiAttention"]
    # Every attention module of Mochi is a block's joint attn1 (there is no cross-attention) ...
    assert len(MOCHI.self_attention_layers(pipe.transformer)) == len(names) == len(pipe.transformer.transformer_blocks)
    accel.accelerate(pipe, "radial", **SPARSE["radial"])
    try:
        pipe(generator=torch.Generator().manual_seed(0), **SHORT)
        s = accel.stats(pipe)
    finally:
        accel.disable(pipe)
    # ... and only its calls are counted: one per layer, step and batch item (the T5 encoder is untouched).
    assert s.get("sparse", 0) + s.get("dense", 0) + s.get("fallback", 0) == len(names) * STEPS * 2
    assert s.get("fallback", 0) == 0, s


def test_rettention_state_per_batch_item(family):
    # The guidance branches reach each layer as two calls of different lengths: each keeps its own rho and residual,
    # so every call recalibrates exactly at the recalibration steps and is sparse in between (a state shared by the
    # two calls would be refreshed on every call and never serve a sparse step).
    pipe, _ = family
    accel.accelerate(pipe, "rettention", **{**SPARSE["rettention"], "recalibrate_every": 2})
    try:
        pipe(generator=torch.Generator().manual_seed(0), **{**SHORT, "num_inference_steps": 6})
        s = accel.stats(pipe)
    finally:
        accel.disable(pipe)
    calls = len(MOCHI.self_attention_layers(pipe.transformer)) * 2  # per step: layers x batch items
    # 6 steps: step 0 dense warm-up (0.2 of 6), recalibration at 1, 3, 5, sparse at 2 and 4.
    assert s.get("dense:warmup_steps", 0) == calls
    assert s.get("dense:recalibration", 0) == 3 * calls
    assert s.get("sparse", 0) == 2 * calls and s.get("fallback", 0) == 0, s


def test_lite_caching_is_refused_clearly(family):
    # MochiTransformerBlock returns (hidden_states, encoder_hidden_states): the spec names no block list, so
    # TaylorSeer's lite mode (one residual over the block stack, blocks returning hidden_states) refuses instead of
    # breaking a call.
    pipe, _ = family
    with pytest.raises(UnsupportedModelError, match="lite caching needs the transformer blocks"):
        accel.accelerate(pipe, "taylorseer", lite=True)
    assert not accel.is_accelerated(pipe)


def test_empty_negative_prompt_attends_video_only(family):
    # The pipeline's default negative prompt "" has no valid token (force_zeros_for_empty_prompt zeroes the mask the
    # same way): that item's calls hold the video tokens alone, a layout without text.
    pipe, _ = family
    with observed_attention(pipe, MOCHI) as seen:
        pipe(generator=torch.Generator().manual_seed(0), **{**SHORT, "negative_prompt": "", "num_inference_steps": 2})
    assert sorted({shape[2] for _, shape in seen["calls"]}) == [80, 83]
    accel.accelerate(pipe, "radial", **SPARSE["radial"])
    try:
        out = pipe(generator=torch.Generator().manual_seed(0), **{**SHORT, "negative_prompt": ""}).frames
        s = accel.stats(pipe)
    finally:
        accel.disable(pipe)
    assert torch.isfinite(out).all()
    assert s.get("sparse", 0) > 0 and s.get("fallback", 0) == 0, s
