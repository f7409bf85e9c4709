"""Qwen-Image on the shared per-family checks (tests/models/harness.py), plus Qwen-Image's own facts: the layout
matches the joint ``[text, image]`` attention call (text as long as each branch's prompt), padded text of a batch
reaches the call as a key mask and still takes the sparse path, steps resolve from the ``t / 1000`` timestep, the
token grid at the published resolutions, reference-image grids (edit pipelines), and TaylorSeer's modules."""

import pytest
import torch
from accel.attention_kernels import TokenLayout
from accel.pipelines.qwen_image import image_grids, qwen_image_layout, qwen_image_timestep
from accel.pipelines.spec import modules_matching

from tests.models.attention_spy import routed_calls
from tests.models.harness import SPARSE, accelerated_call, call, family_tests, resolved_config, spec_named

SPEC = spec_named("qwen-image")
globals().update(family_tests("qwen-image"))

DRAFT = SPARSE["draft"]


def _run(pipe, preset, overrides, **kw):
    return accelerated_call(pipe, SPEC, preset, overrides, **kw)


def test_layout_matches_every_joint_attention_call(family, monkeypatch):
    pipe, _ = family
    seen = routed_calls(monkeypatch)
    out, s = _run(pipe, "draft", DRAFT, negative_prompt="w6")
    layers = len(pipe.transformer.transformer_blocks)
    steps = SPEC.tiny_call["num_inference_steps"]
    assert len(seen) == 2 * steps * layers  # true CFG: cond and uncond forwards
    # One prompt per branch: no padding, so no mask, and the text is each prompt's own length after the chat
    # template's first 34 tokens are dropped (12 tokens for "w3 w4 w5", 10 for "w6").
    text = {c.step.branch: c.step.layout.text_len for c in seen}
    assert text == {"cond": 12, "uncond": 10}
    for q_shape, _, _, step, key_valid in seen:
        assert key_valid is None
        assert step.layout == TokenLayout(1, 8, 12, text[step.branch], "first")  # 128 x 192 px -> 8 x 12 tokens
        assert q_shape[1] == step.layout.num_tokens
    assert s["sparse"] > 0 and s.get("fallback", 0) == 0, s
    assert torch.isfinite(out).all()
    names = [
        n
        for n, m in pipe.transformer.named_modules()
        if any(m is a for _, a in SPEC.self_attention_layers(pipe.transformer))
    ]
    assert names == [f"transformer_blocks.{i}.attn" for i in range(layers)]


def test_padded_text_of_a_batch_is_masked_and_still_sparse(monkeypatch):
    """Two prompts of different lengths: the shorter one's text is padded and masked by a key-only mask
    ``[B, 1, 1, S]`` in the attention call; the router turns it into key padding and the call stays sparse."""
    import diffusers.models.transformers.transformer_qwenimage as tq

    pipe = SPEC.tiny_pipeline()
    kw = dict(prompt=["w3 w4 w5 w6 w7", "w8"], negative_prompt=["w9", "w10 w11"])
    ref = call(pipe, SPEC, **kw)
    masks = []
    real = tq.dispatch_attention_fn
    monkeypatch.setattr(tq, "dispatch_attention_fn", lambda *a, **k: masks.append(k.get("attn_mask")) or real(*a, **k))
    seen = routed_calls(monkeypatch)
    out, s = _run(pipe, "draft", DRAFT, **kw)
    assert masks and all(m is not None and m.dtype == torch.bool and m.shape[1:3] == (1, 1) for m in masks)
    for q_shape, _, _, step, key_valid in seen:
        assert q_shape[0] == 2 and q_shape[1] == step.layout.num_tokens
        assert key_valid is not None and not bool(key_valid.all())
        assert bool(key_valid[:, step.layout.video_slice].all())  # only text is ever padded
    assert s["sparse"] > 0 and s.get("fallback", 0) == 0, s
    assert torch.isfinite(out).all()
    assert torch.equal(call(pipe, SPEC, **kw), ref)


def test_steps_resolve_from_the_scaled_timestep(family, monkeypatch):
    """The transformer gets ``t / 1000``; ``timestep_from_inputs`` gives back the scheduler's timestep, so every
    forward resolves to its step by value (the pipeline's cache contexts carry no step index)."""
    pipe, _ = family
    seen = routed_calls(monkeypatch)
    _run(pipe, "draft", DRAFT)
    timesteps = pipe.scheduler.timesteps
    by_step = {}
    for *_, step, _ in seen:
        assert step.num_steps == len(timesteps)
        assert step.timestep == pytest.approx(float(timesteps[step.step_index]), rel=1e-5)
        by_step.setdefault(step.step_index, set()).add(step.branch)
    assert by_step == {i: {"cond", "uncond"} for i in range(len(timesteps))}
    assert float(qwen_image_timestep((), {"timestep": torch.tensor([0.5])})) == pytest.approx(500.0)


def test_token_grid_at_published_resolutions():
    # The pipeline's default 1024^2 (default_sample_size 128 x 8) and the Qwen-Image model card's aspect ratios
    # (width x height): 1:1 1328 x 1328, 16:9 1664 x 928, 4:3 1472 x 1140 (1140 px floors to 71 rows, as the
    # pipeline's prepare_latents floors it).
    assert SPEC.token_grid(1, 1024, 1024) == TokenLayout(1, 64, 64)
    assert SPEC.token_grid(1, 1328, 1328) == TokenLayout(1, 83, 83)
    assert SPEC.token_grid(1, 928, 1664) == TokenLayout(1, 58, 104)
    assert SPEC.token_grid(1, 1140, 1472) == TokenLayout(1, 71, 92)
    # What the transformer receives at 1664 x 928 with a 20-token prompt.
    kw = dict(hidden_states=torch.zeros(1, 58 * 104, 64), encoder_hidden_states=torch.zeros(1, 20, 8),
              img_shapes=[[(1, 58, 104)]])  # fmt: skip
    assert qwen_image_layout(None, (), kw) == TokenLayout(1, 58, 104, 20, "first")


def test_reference_image_grids():
    """Edit pipelines append reference images' grids to img_shapes: the same grid stacks as frames; another grid
    cannot be expressed (the layout covers fewer tokens than the call: counted fallback:layout_mismatch)."""
    text = torch.zeros(1, 20, 8)
    assert image_grids([[(1, 8, 12)]]) == image_grids([(1, 8, 12)]) == [(1, 8, 12)]
    same = dict(hidden_states=torch.zeros(1, 2 * 96, 64), encoder_hidden_states=text, img_shapes=[[(1, 8, 12)] * 2])
    assert qwen_image_layout(None, (), same) == TokenLayout(2, 8, 12, 20, "first")
    other = dict(hidden_states=torch.zeros(1, 96 + 36, 64), encoder_hidden_states=text,
                 img_shapes=[[(1, 8, 12), (1, 6, 6)]])  # fmt: skip
    assert qwen_image_layout(None, (), other).num_tokens < 20 + 96 + 36


def test_taylorseer_modules(family):
    pipe, ref = family
    t = pipe.transformer
    names = [n for n, _ in modules_matching(t, SPEC.cache_module_patterns)]
    want = [
        f"transformer_blocks.{i}.{m}" for i in range(len(t.transformer_blocks)) for m in ("attn", "img_mlp", "txt_mlp")
    ]
    assert sorted(names) == sorted(want)
    out, s = _run(pipe, "taylorseer", {"interval": 2, "warmup_steps": 1})
    # 6 steps, full at 0, 2, 4 and predicted at 1, 3, 5, for cond and uncond.
    assert s["cache:computed"] == s["cache:predicted"] == 3 * 2 * len(want), s
    assert torch.isfinite(out).all() and not torch.equal(out, ref)


def test_no_published_defaults(family):
    """No method publishes Qwen-Image settings: the generic defaults apply."""
    pipe, _ = family
    assert SPEC.defaults(pipe) == {}
    cfg = resolved_config(pipe, "taylorseer").cache
    assert (cfg.interval, cfg.order, cfg.warmup_steps) == (5, 1, 1)
