"""Flux.1 on the shared per-family checks (tests/models/harness.py), plus Flux's own facts: the layout matches the
joint ``[text, image]`` attention call of every double- and single-stream block, steps resolve from the ``t / 1000``
timestep, the token grid at the published resolutions, Kontext's reference image (two frames when it has the
target's size, a counted dense fallback otherwise), Fill, TaylorSeer's modules and published FLUX settings."""

import pytest
import torch
from accel.attention_kernels import TokenLayout
from accel.pipelines.flux import flux_layout, flux_timestep, image_grids
from accel.pipelines.spec import modules_matching

import accel
from tests.models.attention_spy import routed_calls
from tests.models.harness import SPARSE, accelerated_call, call, family_tests, output, resolved_config, spec_named

SPEC = spec_named("flux")
globals().update(family_tests("flux"))

DRAFT = SPARSE["draft"]


def _run(pipe, preset, overrides, **kw):
    return accelerated_call(pipe, SPEC, preset, overrides, **kw)


def _ids(rows: int, cols: int, index: int = 0) -> torch.Tensor:
    """Flux's image position ids ``[rows * cols, 3]`` (index, row, column), row-major, as the pipelines make them."""
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([torch.full_like(r, index), r, c], -1).reshape(-1, 3).float()


def test_layout_matches_every_joint_attention_call(family, monkeypatch):
    pipe, ref = family
    seen = routed_calls(monkeypatch)
    out, s = _run(pipe, "draft", DRAFT)
    t = pipe.transformer
    layers = len(t.transformer_blocks) + len(t.single_transformer_blocks)
    steps = SPEC.tiny_call["num_inference_steps"]
    # True CFG: a cond and an uncond forward per step, each calling every double- and single-stream block once.
    assert len(seen) == 2 * steps * layers
    assert sorted({c.layer for c in seen}) == list(range(layers))
    for q_shape, _, _, step, _ in seen:
        # 16 padded T5 tokens first, then 128 x 192 px -> 8 x 12 packed tokens.
        assert step.layout == TokenLayout(1, 8, 12, 16, "first")
        assert q_shape[1] == step.layout.num_tokens == 16 + 96
    assert s["sparse"] > 0 and s.get("fallback", 0) == 0, s
    assert not torch.equal(out, ref)
    names = [n for n, m in t.named_modules() if any(m is a for _, a in SPEC.self_attention_layers(t))]
    assert names == [f"transformer_blocks.{i}.attn" for i in range(len(t.transformer_blocks))] + [
        f"single_transformer_blocks.{i}.attn" for i in range(len(t.single_transformer_blocks))
    ]


def test_steps_resolve_from_the_scaled_timestep(family, monkeypatch):
    """The transformer gets ``t / 1000``; ``timestep_from_inputs`` gives back the scheduler's timestep, so every
    forward resolves to its step by value (FluxPipeline's cache contexts carry no step index)."""
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
    assert float(flux_timestep((), {"timestep": torch.tensor([0.75])})) == pytest.approx(750.0)


def test_token_grid_at_published_resolutions():
    # reference/sparse-attention-methods.md table A: FLUX.1-dev 1024^2 -> 64 x 64 = 4,096 image + 512 text tokens.
    assert SPEC.token_grid(1, 1024, 1024) == TokenLayout(1, 64, 64)
    assert SPEC.token_count(1, 1024, 1024) == 4096
    assert SPEC.token_grid(1, 768, 1360) == TokenLayout(1, 48, 85)  # 1360 x 768 landscape: 85 tokens a row
    assert SPEC.token_grid(1, 1360, 768) == TokenLayout(1, 85, 48)
    # What the transformer receives at 1024^2 with max_sequence_length 512 (the pipeline's ids and packed latents).
    kw = dict(
        hidden_states=torch.zeros(1, 4096, 64), encoder_hidden_states=torch.zeros(1, 512, 8), img_ids=_ids(64, 64)
    )
    layout = flux_layout(None, (), kw)
    assert layout == TokenLayout(1, 64, 64, 512, "first") and layout.num_tokens == 4608
    kw = dict(hidden_states=torch.zeros(1, 48 * 85, 64), encoder_hidden_states=torch.zeros(1, 512, 8),
              img_ids=_ids(48, 85))  # fmt: skip
    assert flux_layout(None, (), kw) == TokenLayout(1, 48, 85, 512, "first")


def test_pipeline_ids_are_row_major_grids():
    """The ids FluxPipeline itself builds (rows = height / 16) parse as one row-major grid; anything else does not."""
    from diffusers import FluxPipeline

    ids = FluxPipeline._prepare_latent_image_ids(1, 48, 85, "cpu", torch.bfloat16)
    assert image_grids(ids) == [(48, 85)]
    assert image_grids(_ids(85, 48)) == [(85, 48)]
    assert image_grids(torch.cat([_ids(4, 6), _ids(4, 6, index=1)])) == [(4, 6), (4, 6)]
    column_major = _ids(6, 4)[:, [0, 2, 1]]  # a 4 x 6 grid listed column by column
    assert image_grids(column_major) is None
    layout = flux_layout(None, (), dict(hidden_states=torch.zeros(1, 24, 4), encoder_hidden_states=torch.zeros(1, 8, 4),
                                        img_ids=column_major))  # fmt: skip
    assert layout.num_tokens != 8 + 24  # cannot match the call: the core counts fallback:layout_mismatch


def test_published_taylorseer_settings_and_modules(family):
    pipe, _ = family
    cfg = resolved_config(pipe, "taylorseer").cache
    # TaylorSeer-FLUX: fresh_threshold 6, max_order 1, first_enhance 3.
    assert (cfg.interval, cfg.order, cfg.warmup_steps) == (6, 1, 3)
    t = pipe.transformer
    names = [n for n, _ in modules_matching(t, SPEC.cache_module_patterns)]
    double = [
        f"transformer_blocks.{i}.{m}" for i in range(len(t.transformer_blocks)) for m in ("attn", "ff", "ff_context")
    ]
    single = [f"single_transformer_blocks.{i}.{m}" for i in range(len(t.single_transformer_blocks))
              for m in ("attn", "proj_mlp", "proj_out")]  # fmt: skip
    assert sorted(names) == sorted(double + single)


def test_predicted_steps_run_no_attention_and_no_mlp(family, monkeypatch):
    """On predicted steps every cached module is predicted: no attention call at all, and the single-stream
    blocks' MLP and output projection do not run either."""
    import diffusers.models.transformers.transformer_flux as tf

    pipe, ref = family
    calls = []
    real = tf.dispatch_attention_fn
    monkeypatch.setattr(tf, "dispatch_attention_fn", lambda *a, **k: calls.append(1) or real(*a, **k))
    t = pipe.transformer
    layers = len(t.transformer_blocks) + len(t.single_transformer_blocks)
    modules = 3 * layers
    out, s = _run(pipe, "taylorseer", {"interval": 2, "warmup_steps": 1})
    # 6 steps, interval 2 from step 0: steps 0, 2, 4 full, 1, 3, 5 predicted; cond and uncond each.
    assert s["cache:computed"] == s["cache:predicted"] == 3 * 2 * modules, s
    assert len(calls) == 3 * 2 * layers
    assert torch.isfinite(out).all() and not torch.equal(out, ref)


def test_kontext_reference_of_the_same_size_is_a_second_frame(monkeypatch):
    """Kontext appends the reference image's tokens (RoPE index 1) after the target's: with the same grid the call
    is exactly [text, target frame, reference frame]."""
    pipe = SPEC.tiny_pipeline(pipeline="FluxKontextPipeline")
    image = torch.rand(1, 3, 128, 192)
    kw = dict(image=image, _auto_resize=False, max_area=128 * 192)
    ref = call(pipe, SPEC, **kw)
    seen = routed_calls(monkeypatch)
    out, s = _run(pipe, "draft", DRAFT, **kw)
    assert seen and all(step.layout == TokenLayout(2, 8, 12, 16, "first") for *_, step, _ in seen)
    assert all(c.q_shape[1] == 16 + 2 * 96 for c in seen)
    assert s["sparse"] > 0 and s.get("fallback", 0) == 0, s
    assert torch.isfinite(out).all()
    assert torch.equal(call(pipe, SPEC, **kw), ref)


def test_kontext_reference_of_another_size_runs_dense_counted():
    """A reference image with another grid cannot be expressed by one token layout: every call keeps the original
    attention, counted as fallback:layout_mismatch, and the output is the untouched pipeline's."""
    pipe = SPEC.tiny_pipeline(pipeline="FluxKontextPipeline")
    kw = dict(image=torch.rand(1, 3, 64, 64), _auto_resize=False, max_area=128 * 192)
    ref = call(pipe, SPEC, **kw)
    out, s = _run(pipe, "draft", DRAFT, **kw)
    layers = len(pipe.transformer.transformer_blocks) + len(pipe.transformer.single_transformer_blocks)
    assert s.get("sparse", 0) == 0
    assert s["fallback:layout_mismatch"] == s["fallback"] == 2 * SPEC.tiny_call["num_inference_steps"] * layers, s
    assert torch.equal(out, ref)


def _call_without_true_cfg(pipe, **kw):
    """The tiny call for pipelines without true CFG (FluxFillPipeline takes no negative prompt)."""
    base = {k: v for k, v in SPEC.tiny_call.items() if k not in ("negative_prompt", "true_cfg_scale")}
    return output(pipe(generator=torch.Generator().manual_seed(0), **{**base, **kw}))


def test_fill_pipeline():
    """FluxFillPipeline (masked image and mask concatenated on channels: the same token grid) takes the sparse path."""
    pipe = SPEC.tiny_pipeline(pipeline="FluxFillPipeline")
    mask = torch.zeros(1, 1, 128, 192)
    mask[..., 32:96, 48:144] = 1
    kw = dict(image=torch.rand(1, 3, 128, 192), mask_image=mask)
    ref = _call_without_true_cfg(pipe, **kw)
    accel.accelerate(pipe, "draft", **DRAFT)
    try:
        out = _call_without_true_cfg(pipe, **kw)
        s = accel.stats(pipe)
    finally:
        accel.disable(pipe)
    assert s["sparse"] > 0 and s.get("fallback", 0) == 0, s
    assert torch.isfinite(out).all()
    assert torch.equal(_call_without_true_cfg(pipe, **kw), ref)


def test_img2img_pipeline():
    """FluxImg2ImgPipeline starts part-way down the schedule: its steps still resolve by timestep."""
    pipe = SPEC.tiny_pipeline(pipeline="FluxImg2ImgPipeline")
    kw = dict(image=torch.rand(1, 3, 128, 192), strength=0.7)
    ref = call(pipe, SPEC, **kw)
    out, s = _run(pipe, "draft", DRAFT, **kw)
    assert s["sparse"] > 0 and s.get("fallback", 0) == 0, s
    assert torch.isfinite(out).all()
    assert torch.equal(call(pipe, SPEC, **kw), ref)
