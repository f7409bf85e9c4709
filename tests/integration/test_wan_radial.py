"""accelerate()/disable() with the radial preset on tiny offline Wan pipelines."""

import sys

import pytest
import torch

import accel
from accel import AccelConfig, RadialConfig, accelerate, disable
from accel.testing import tiny_wan_pipeline
from tests.helpers import run

# The tiny grid has 80 tokens: 16-token blocks make the masks non-trivial. Sequences this short never pay on any
# backend (min_speedup would keep them dense); these tests exercise the sparse path itself.
SMALL = dict(block_size=16, min_speedup=0)
WAN_SITE = "diffusers.models.transformers.transformer_wan"


def _pristine(pipe):
    for t in (pipe.transformer, getattr(pipe, "transformer_2", None)):
        if t is None:
            continue
        for m in t.modules():
            # diffusers itself gives the transformer a registry when the pipeline opens a cache context
            registry = getattr(m, "_diffusers_hook", None)
            assert registry is None or not [h for h in registry.hooks if h.startswith("accel.")]
            assert registry is None or m is t, "a hook registry was left behind"
            assert "forward" not in m.__dict__, "an instance-level forward was left behind"
    assert not hasattr(sys.modules[WAN_SITE].dispatch_attention_fn, "__accel_original__")


def test_disable_restores_bit_identical_output(wan):
    pipe, ref = wan
    assert accelerate(pipe, "radial", **SMALL) is pipe
    out = run(pipe)
    assert not torch.equal(out, ref)  # sparse steps really changed something
    assert disable(pipe) is pipe
    _pristine(pipe)
    assert torch.equal(run(pipe), ref)
    assert disable(pipe) is pipe  # a second disable is a no-op


def test_sparse_calls_are_taken_and_counted(wan):
    pipe, ref = wan
    accelerate(pipe, "radial", **SMALL)
    try:
        out = run(pipe)
        s = accel.stats(pipe)
    finally:
        disable(pipe)
    # 6 steps x 2 guidance branches x 2 layers = 24 self-attention calls. Published Wan defaults: layer 0 dense,
    # 24% of steps dense (round(0.24 * 6) = 1 step).
    assert s["dense:first_layers"] == 12
    assert s["dense:warmup_steps"] == 2
    assert s["sparse"] == 10
    assert s.get("fallback", 0) == 0
    assert s["mean_sparse_density"] == pytest.approx(16 / 25)
    rel = ((out - ref).norm() / ref.norm()).item()
    print(f"\nradial vs dense latent relative L2 error (tiny Wan, 5/6 steps sparse): {rel:.4f}")
    assert torch.isfinite(out).all() and rel < 0.2


def test_all_dense_schedule_is_bit_identical(wan):
    pipe, ref = wan
    accelerate(pipe, "radial", dense_step_fraction=1.0, **SMALL)
    try:
        assert torch.equal(run(pipe), ref)
        s = accel.stats(pipe)
        assert s.get("sparse", 0) == 0 and s["dense"] == 24
    finally:
        disable(pipe)


def test_flex_backend_matches_reference_backend(wan):
    pipe, _ = wan
    outs = {}
    for backend in ("flex", "reference"):
        accelerate(pipe, "radial", backend=backend, dense_step_fraction=0.0, dense_layers=0, **SMALL)
        try:
            outs[backend] = run(pipe, num_inference_steps=3)
        finally:
            disable(pipe)
    assert (outs["flex"] - outs["reference"]).abs().max() < 1e-4


def test_resolved_config_uses_published_wan_defaults(wan):
    pipe, _ = wan
    accelerate(pipe, "radial")
    try:
        cfg = accel.accel_config(pipe).attention
    finally:
        disable(pipe)
    assert (cfg.decay, cfg.dense_step_fraction, cfg.dense_layers, cfg.sink) == (0.2, 0.24, 1, True)
    accelerate(pipe, AccelConfig(attention=RadialConfig(decay=0.5, block_size=16, min_speedup=0)))
    try:
        assert accel.accel_config(pipe).attention.decay == 0.5
    finally:
        disable(pipe)


def test_wan22_two_experts():
    pipe = tiny_wan_pipeline(two_experts=True)
    ref = run(pipe, num_inference_steps=8)
    accelerate(pipe, "radial", **SMALL)
    try:
        cfg = accel.accel_config(pipe).attention
        assert cfg.decay == 0.8 and cfg.dense_step_fraction == pytest.approx(11 / 40)
        out = run(pipe, num_inference_steps=8)
        s = accel.stats(pipe)
    finally:
        disable(pipe)
    # both experts route their self-attention: 8 steps x 2 branches x 2 layers, whichever expert ran
    assert s["dense"] + s["sparse"] == 32 and s["sparse"] > 0
    assert torch.isfinite(out).all()
    _pristine(pipe)
    assert torch.equal(run(pipe, num_inference_steps=8), ref)


def test_two_pipelines_are_independent(wan):
    pipe, ref = wan
    other = tiny_wan_pipeline(seed=1)
    other_ref = run(other)
    accelerate(pipe, "radial", **SMALL)
    try:
        # the call site is patched while pipe is accelerated, yet the other pipeline computes exactly as before
        assert torch.equal(run(other), other_ref)
        accelerate(other, "radial", **SMALL)
        disable(other)
        assert hasattr(sys.modules[WAN_SITE].dispatch_attention_fn, "__accel_original__")  # still needed by pipe
    finally:
        disable(pipe)
    _pristine(pipe)


# ---------------------------------------------------------------------------------------------- errors


def test_errors_say_what_to_do(wan):
    pipe, _ = wan
    with pytest.raises(ValueError, match=r"unknown preset 'radiall' \(did you mean 'radial'\?\).*available presets"):
        accelerate(pipe, "radiall")
    with pytest.raises(ValueError, match="decay must be > 0"):
        accelerate(pipe, "radial", decay=-1.0)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['decy'\].*valid parameters"):
        accelerate(pipe, "radial", decy=0.3)
    with pytest.raises(ValueError, match="dense_step_fraction must be in"):
        accelerate(pipe, "radial", dense_step_fraction=12)
    accelerate(pipe, "radial", **SMALL)
    try:
        with pytest.raises(RuntimeError, match="already accelerated.*disable"):
            accelerate(pipe, "radial")
    finally:
        disable(pipe)
    assert not accel.is_accelerated(pipe)


def test_unsupported_pipeline_lists_supported_models():
    class FakePipe:
        transformer = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="not supported yet; supported models: .*wan \\(WanPipeline"):
        accelerate(FakePipe(), "radial")

    class NoTransformer:
        unet = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="has no transformer"):
        accelerate(NoTransformer(), "radial")


def test_refuses_after_torch_compile(wan):
    pipe, _ = wan
    original = pipe.transformer
    pipe.transformer = torch.compile(original)  # lazy: nothing compiles unless it is called
    try:
        with pytest.raises(RuntimeError, match="already compiled.*accelerate\\(pipe, ...\\) first"):
            accelerate(pipe, "radial")
    finally:
        pipe.transformer = original
    assert not accel.is_accelerated(pipe)
    for m in original.modules():
        assert not [h for h in getattr(m, "_diffusers_hook", type("R", (), {"hooks": {}})).hooks if "accel" in h]


def test_wan_spec_token_count_and_blocks(wan):
    from accel.pipelines.wan import WAN

    assert WAN.token_count(81, 480, 832) == 21 * 30 * 52  # Wan2.1 1.3B default: 32,760 tokens
    assert WAN.token_count(17, 64, 64) == 5 * 4 * 4  # the tiny test call
    pipe, _ = wan
    assert WAN.blocks(pipe.transformer) == list(pipe.transformer.blocks)


def test_sparsity_that_cannot_pay_runs_dense_and_says_why(wan):
    """With the default min_speedup, a mask too dense for the backend to win keeps the original attention."""
    pipe, ref = wan
    accelerate(pipe, "radial", block_size=16, dense_step_fraction=0.0, dense_layers=0, backend="flex")  # density 0.64
    try:
        out = run(pipe)
        s = accel.stats(pipe)
    finally:
        disable(pipe)
    assert s.get("sparse", 0) == 0 and s["dense:not_faster"] == 24
    assert torch.equal(out, ref)


def test_speedup_estimate_follows_the_efficiency_table():
    from accel.methods.base import estimated_speedup
    from accel.methods.efficiency import TYPED

    q = torch.zeros(1, 8, 1, 8)  # the suite runs on the typed table (tests/conftest.py)
    assert estimated_speedup(0.25, "flex", q) == pytest.approx(TYPED[("cpu", "flex")] / 0.25)
    assert estimated_speedup(0.25, "gather", q) == pytest.approx(TYPED[("cpu", "gather")] / 0.25)
    assert estimated_speedup(0.25, "sdpa", q) == pytest.approx(TYPED[("cpu", "sdpa")] / 0.25)
    assert estimated_speedup(0.25, "reference", q) < 1  # the fp32 oracle never pays
    assert estimated_speedup(0.9, "auto", q) < 1 < estimated_speedup(0.3, "auto", q)
