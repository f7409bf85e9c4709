"""The draft, sparse-vdit and rettention presets on tiny offline Wan pipelines (radial: test_wan_radial.py).

The tiny grid is 5 latent frames of 4x4 tokens (80 tokens); 16-token blocks make one block per frame.
"""

import json

import pytest
import torch
from accel.attention_kernels import TokenLayout

import accel
from accel import accelerate, disable
from accel.config import RettentionConfig
from accel.methods.rettention import RettentionMethod
from accel.state import LayerKey, Stats, StepInfo
from accel.testing import tiny_wan_pipeline
from tests.helpers import CALL, run

# Sequences this short never pay on any backend (min_speedup would keep them dense); these tests exercise the
# sparse path itself.
SMALL = dict(block_size=16, min_speedup=0)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# ---- draft ------------------------------------------------------------------------------------------------------
def test_draft_runs_sparse_and_disable_restores(wan):
    pipe, ref = wan
    accelerate(pipe, "draft", patch=(4, 4), sparsity=0.5, **SMALL)
    try:
        out = run(pipe)
        s = accel.stats(pipe)
        cfg = accel.accel_config(pipe).attention
    finally:
        disable(pipe)
    assert (cfg.sparsity, cfg.dense_layers) == (0.5, 1)  # Wan's dense first layer; sparsity overridden
    # 6 steps x 2 branches x 2 layers; layer 0 dense, round(0.3 * 6) = 2 warm-up steps.
    assert s["dense:first_layers"] == 12 and s["dense:warmup_steps"] == 4 and s["sparse"] == 8
    # 5 video patches: ceil(0.5 * 25) = 13 pairs by score plus diagonals not among them: 13..18 of 25.
    assert 13 / 25 <= s["mean_sparse_density"] <= 18 / 25
    print(f"\ndraft vs dense latent relative L2 (tiny Wan): {_rel(out, ref):.4f}")
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    assert torch.equal(run(pipe), ref)


def test_draft_pads_grids_that_do_not_divide_into_patches(wan):
    pipe, ref = wan
    # 4x4 frames with 2x8 patches: each frame pads to 4x8 (2 patches, half of each is padding).
    accelerate(pipe, "draft", patch=(2, 8), sparsity=0.5, **SMALL)
    try:
        out = run(pipe)
        s = accel.stats(pipe)
    finally:
        disable(pipe)
    assert s["sparse"] == 8 and torch.isfinite(out).all()
    assert torch.equal(run(pipe), ref)


def test_draft_rejects_a_patch_that_is_not_one_block():
    with pytest.raises(ValueError, match="rows \\* cols == block_size"):
        accel.DraftConfig(patch=(4, 8), block_size=16)


# ---- re-ttention -------------------------------------------------------------------------------------------------
def test_rettention_schedule_state_and_memory(wan):
    pipe, ref = wan
    accelerate(pipe, "rettention", window_tokens=2, window_frames=0, **SMALL)
    method = accel.attention_method(pipe)
    try:
        out = run(pipe)
        s = accel.stats(pipe)
        after = dict(method.states)
    finally:
        disable(pipe)
    # 6 steps: round(0.3 * 6) = 2 dense, recalibration every max(2, round(6 / 10)) = 2 steps: 2 and 4; sparse 3, 5.
    # x 2 branches x 2 layers (no dense layer by default).
    assert s["dense:warmup_steps"] == 8 and s["dense:recalibration"] == 8 and s["sparse"] == 8
    assert s["mean_sparse_density"] == pytest.approx(1 / 5)  # own frame = one block of five
    # Per (layer, branch): rho [1, 2, 80] fp32 + residual [1, 80, 2, 16] fp32; 2 layers x 2 branches.
    assert s["rettention_peak_bytes"] == 4 * (1 * 2 * 80 * 4 + 80 * 2 * 16 * 4)
    assert after == {} and s["rettention_bytes"] == 0  # state is dropped at the end of every pipeline call
    print(f"\nrettention vs dense latent relative L2 (tiny Wan): {_rel(out, ref):.4f}")
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    assert torch.equal(run(pipe), ref)


def test_rettention_residual_dtype_and_layer_subset(wan):
    pipe, _ = wan
    accelerate(
        pipe, "rettention", window_tokens=2, window_frames=0, residual_dtype="bfloat16", residual_layers=(1,), **SMALL
    )
    try:
        run(pipe)
        s = accel.stats(pipe)
    finally:
        disable(pipe)
    # rho everywhere (4 states), a bf16 residual only for layer 1 (2 branches).
    assert s["rettention_peak_bytes"] == 4 * (2 * 80 * 4) + 2 * (80 * 2 * 16 * 2)


def test_rettention_same_inputs_reproduce_dense_and_drift_applies():
    """Recalibrate, then sparse steps on the same q/k/v: rho * sparse + residual equals the dense output exactly on
    the first sparse step; the drift adds ratio_drift * sparse output on each later one."""
    layout = TokenLayout(4, 4, 4)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 64, 2, 16, generator=g) for _ in range(3))
    cfg = RettentionConfig(
        window_tokens=2, window_frames=0, recalibrate_every=5, block_size=16, backend="reference", min_speedup=0
    ).with_defaults({})
    m = RettentionMethod(cfg)
    stats = Stats()

    def call(i):
        return m.attend(q, k, v, StepInfo(i, 10, "cond", layout), LayerKey("transformer", 0), None, stats)

    dense = call(3)  # round(0.3 * 10) = 3 dense steps: step 3 is the first recalibration
    assert stats.counts["dense:recalibration"] == 1
    torch.testing.assert_close(call(4), dense, atol=1e-5, rtol=1e-5)
    sparse = accel.attention_kernels.block_sparse_attention(q, k, v, m.mask_for(layout, "cpu"))
    torch.testing.assert_close(call(5) - dense, 0.04 * sparse, atol=1e-5, rtol=1e-5)
    assert stats.counts["sparse"] == 2
    call(2)  # the step went back: a new generation; step 2 is a warm-up step (dense, state untouched)
    call(3)
    assert stats.counts["dense:recalibration"] == 2


# ---- sparse-vdit ---------------------------------------------------------------------------------------------
@pytest.fixture
def plan_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCEL_PLAN_DIR", str(tmp_path))
    return tmp_path


CAL = {k: CALL[k] for k in ("num_inference_steps", "height", "width", "num_frames", "max_sequence_length")}


def test_sparse_vdit_calibrate_then_preset(wan, plan_dir):
    pipe, ref = wan
    plan = accel.calibrate(pipe, ["w3 w4", "w5 w6 w7"], tolerance=0.6, block_size=16, guidance_scale=5.0, **CAL)
    assert not accel.is_accelerated(pipe)
    saved = json.loads((plan_dir / plan.meta["path"].split("/")[-1]).read_text())
    assert saved["num_steps"] == 6 and saved["layout"] == {
        "frames": 5,
        "height": 4,
        "width": 4,
        "text_len": 0,
        "text_pos": "none",
    }
    heads = plan.patterns["transformer"][1][0]  # layer 0 is dense (Wan default), so the plan has layer 1 only
    assert set(plan.patterns["transformer"]) == {1} and len(heads) == 2
    errs = plan.meta["head_errors"]["transformer"]["1"][0]
    print(f"\nsparse-vdit plan (tolerance 0.6): {[h.kind for h in heads]}, errors {errs}")
    assert all(e <= 0.6 for e in errs)
    accelerate(pipe, "sparse-vdit", block_size=16, min_speedup=0)
    try:
        out = run(pipe)
        s = accel.stats(pipe)
    finally:
        disable(pipe)
    if all(h.kind == "full" for h in heads):
        assert s["dense:plan_full"] == 10
    else:
        assert s["sparse"] == 10 and not torch.equal(out, ref)
    assert torch.isfinite(out).all()
    assert torch.equal(run(pipe), ref)


def test_sparse_vdit_missing_and_mismatched_plans(wan, plan_dir):
    pipe, ref = wan
    accelerate(pipe, "sparse-vdit", block_size=16, min_speedup=0)
    try:
        with pytest.raises(FileNotFoundError, match="accel.calibrate"):
            run(pipe)
    finally:
        disable(pipe)
    plan = accel.calibrate(pipe, "w3", tolerance=0.6, block_size=16, guidance_scale=1.0, **CAL)
    path = plan.meta["path"]
    accelerate(pipe, "sparse-vdit", plan=path, block_size=16, min_speedup=0)
    try:
        with pytest.raises(ValueError, match="calibrated for 5x4x4 latent tokens, 6 steps.*8 steps"):
            run(pipe, num_inference_steps=8)
    finally:
        disable(pipe)
    other = tiny_wan_pipeline(num_layers=3)
    with pytest.raises(ValueError, match="another model"):
        accelerate(other, "sparse-vdit", plan=path, block_size=16, min_speedup=0)
    assert not accel.is_accelerated(other)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        accelerate(pipe, "sparse-vdit", plan=str(plan_dir / "nope.json"))
    assert torch.equal(run(pipe), ref)


def test_calibrate_refuses_an_accelerated_pipeline(wan):
    pipe, _ = wan
    accelerate(pipe, "radial", **SMALL)
    try:
        with pytest.raises(RuntimeError, match="untouched pipeline"):
            accel.calibrate(pipe, "w3", **CAL)
    finally:
        disable(pipe)
