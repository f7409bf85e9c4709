"""TaylorSeer caching on tiny offline Wan pipelines."""

import sys
import types

import pytest
import torch

import accel
from accel import TaylorSeerConfig, accelerate, disable
from accel.testing import tiny_wan_pipeline, tiny_wan_transformer
from tests.helpers import run as run_call

WAN_SITE = "diffusers.models.transformers.transformer_wan"


def run(pipe, **kw):
    """The shared tiny call with 12 steps, so the cache schedule skips some."""
    return run_call(pipe, **{"num_inference_steps": 12, **kw})


@pytest.fixture(scope="module")
def wan():
    pipe = tiny_wan_pipeline()
    return pipe, run(pipe)


class ExecutionCounter:
    """Counts real executions: attention kernel calls at the call site and feed-forward first-layer calls."""

    def __init__(self, pipe, monkeypatch):
        self.attention = 0
        self.ffn = 0
        module = sys.modules[WAN_SITE]
        original = module.dispatch_attention_fn

        def counting(*args, **kwargs):
            self.attention += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, "dispatch_attention_fn", counting)
        self.handles = [b.ffn.net[0].register_forward_hook(self._ffn) for b in pipe.transformer.blocks]

    def _ffn(self, *_):
        self.ffn += 1

    def close(self):
        for h in self.handles:
            h.remove()


def test_forward_calls_are_actually_skipped(wan, monkeypatch):
    pipe, ref = wan
    counter = ExecutionCounter(pipe, monkeypatch)
    try:
        run(pipe)
        dense_attn, dense_ffn = counter.attention, counter.ffn
        counter.attention = counter.ffn = 0
        accelerate(pipe, "taylorseer", threshold=None)
        try:
            out = run(pipe)
            s = accel.stats(pipe)
        finally:
            disable(pipe)
    finally:
        counter.close()
    # Wan defaults (TaylorSeer-Wan2.1): interval 5, order 1, warm-up 1 -> full steps 0, 5, 10 of 12
    assert dense_attn == 12 * 2 * 2 * 2 and dense_ffn == 12 * 2 * 2  # steps x branches x layers (x attn1, attn2)
    assert counter.attention == 3 * 2 * 2 * 2 and counter.ffn == 3 * 2 * 2
    assert s["cache:computed"] == 3 * 2 * 6 and s["cache:predicted"] == 9 * 2 * 6
    rel = ((out - ref).norm() / ref.norm()).item()
    print(f"\ntaylorseer (3/12 full steps) vs uncached latent relative L2: {rel:.4f}")
    assert torch.isfinite(out).all()


def test_consecutive_generations_equal_a_fresh_pipeline(wan):
    pipe, _ = wan
    accelerate(pipe, "taylorseer", threshold=None)
    try:
        first, second = run(pipe), run(pipe)
        assert accel.stats(pipe)["cache_bytes"] == 0  # state released at the end of each call
    finally:
        disable(pipe)
    fresh = tiny_wan_pipeline()
    accelerate(fresh, "taylorseer", threshold=None)
    try:
        assert torch.equal(first, second) and torch.equal(run(fresh), first)
    finally:
        disable(fresh)


def test_cond_and_uncond_states_are_kept_apart(wan):
    pipe, _ = wan
    accelerate(pipe, "taylorseer", threshold=None)
    seen = []
    hooks = pipe.transformer.blocks[0].ffn._diffusers_hook.hooks
    (hook,) = [h for name, h in hooks.items() if name.startswith("accel.cache#")]

    def capture(p, i, t, kw):
        states = hook.state_manager._state_cache
        seen.append({name: st.ladders[0].factors[0].clone() for name, st in states.items()})
        return kw

    try:
        run(pipe, callback_on_step_end=capture)
    finally:
        disable(pipe)
    assert sorted(seen[3]) == ["cond", "uncond"]
    # each branch refreshed its own ladder from its own prompt: the cached features differ
    assert not torch.equal(seen[3]["cond"], seen[3]["uncond"])


def test_memory_is_reported_and_bounded_by_lite_and_dtype(wan):
    pipe, _ = wan
    peaks = {}
    for name, kw in {"full": {}, "bf16": {"factor_dtype": "bfloat16"}, "lite": {"lite": True}}.items():
        accelerate(pipe, "taylorseer", threshold=None, **kw)
        try:
            run(pipe)
            peaks[name] = accel.stats(pipe)["cache_peak_bytes"]
        finally:
            disable(pipe)
    tokens, width = 5 * 4 * 4, 32  # 80 tokens x hidden 32, fp32
    per_tensor = tokens * width * 4
    assert peaks["full"] == 2 * 6 * 2 * per_tensor  # branches x modules x (order + 1)
    assert peaks["bf16"] == peaks["full"] // 2
    assert peaks["lite"] == 2 * 1 * 2 * per_tensor


def test_radial_plus_taylorseer_share_one_schedule(wan):
    pipe, _ = wan
    accelerate(
        pipe, "radial+taylorseer", block_size=16, min_speedup=0, threshold=None
    )  # tiny: exercise the sparse path
    try:
        run(pipe)
        s = accel.stats(pipe)
    finally:
        disable(pipe)
    # radial keeps round(0.24 * 12) = 3 steps dense; the cache must compute them: full = {0, 1, 2} + {0, 5, 10}
    assert s["cache:computed"] == 5 * 2 * 6
    assert s["sparse"] == 2 * 2 * 1  # steps 5 and 10, both branches, layer 1 (layer 0 is dense)
    assert s["dense:warmup_steps"] == 3 * 2


def test_disable_restores_bit_identical_output(wan):
    pipe, ref = wan
    for preset in ("taylorseer", "radial+taylorseer"):
        accelerate(pipe, preset, lite=False, threshold=None)
        run(pipe)
        disable(pipe)
        for m in pipe.transformer.modules():
            registry = getattr(m, "_diffusers_hook", None)
            assert registry is None or not [h for h in registry.hooks if h.startswith("accel.")]
            assert "forward" not in m.__dict__
        assert torch.equal(run(pipe), ref)


def test_pipeline_without_cache_context_gets_one():
    torch.manual_seed(0)
    t = tiny_wan_transformer(head_dim=8).eval()
    holder = types.SimpleNamespace(transformer=t)  # no scheduler, no cache_context: steps are counted
    x = torch.randn(1, 16, 3, 4, 4)
    enc = torch.randn(1, 8, 32)
    accelerate(holder, "taylorseer", interval=2, warmup_steps=1, threshold=None)
    try:
        with torch.no_grad():
            outs = [t(x, torch.tensor([900.0 - 100 * i]), enc, return_dict=False)[0] for i in range(5)]
        s = accel.stats(holder)
    finally:
        disable(holder)
    # steps 0, 1, 3 computed; 2 and 4 predicted (6 cached modules each)
    assert s["cache:computed"] == 3 * 6 and s["cache:predicted"] == 2 * 6
    assert all(torch.isfinite(o).all() for o in outs)


def test_errors():
    with pytest.raises(ValueError, match="order must be >= 0"):
        TaylorSeerConfig(order=-1)
    with pytest.raises(ValueError, match="interval must be >= 1"):
        TaylorSeerConfig(interval=0)
    with pytest.raises(ValueError, match="distance must be one of"):
        TaylorSeerConfig(distance="seconds")

    class FakePipe:
        transformer = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="not supported yet; supported models"):
        accelerate(FakePipe(), "taylorseer")
    with pytest.raises(ValueError, match="combines two caches"):
        accelerate(FakePipe(), "taylorseer+taylorseer")
