"""The router hands every call it does not understand to the original attention."""

import types

import pytest
import torch
from accel.attention_kernels import TokenLayout

from accel.hosts.diffusers import route_dispatch as route_attention
from accel.state import CURRENT_LAYER, CURRENT_STEP, LayerKey, LayerPlan, Stats, StepInfo


class AlwaysSparse:
    def attend(self, q, k, v, step, layer, scale, stats):
        stats.add("sparse")
        return torch.full_like(q, 7.0)


def original(q, k, v, **kwargs):
    return torch.zeros_like(q)


@pytest.fixture
def active():
    stats = Stats()
    t1 = CURRENT_LAYER.set(LayerPlan(LayerKey("transformer", 3), AlwaysSparse(), stats))
    t2 = CURRENT_STEP.set(StepInfo(5, 10, "cond", TokenLayout(2, 2, 4)))
    yield stats
    CURRENT_LAYER.reset(t1)
    CURRENT_STEP.reset(t2)


def _cp(**degrees):
    return dict(parallel_config=types.SimpleNamespace(context_parallel_config=types.SimpleNamespace(**degrees)))


def test_ulysses_joint_layout_falls_back(active):
    """Joint text + video under CP: the gathered sequence interleaves the ranks' text and image shards."""
    t = CURRENT_STEP.set(StepInfo(5, 10, "cond", TokenLayout(2, 2, 2, text_len=8, text_pos="first")))
    try:
        q, k, v = qkv()
        assert route_attention(original, q, k, v, **_cp(ring_degree=1, ulysses_degree=2)).abs().max() == 0
    finally:
        CURRENT_STEP.reset(t)
    assert active.counts["fallback:context_parallel_joint"] == 1


def qkv(s=16, s_k=None):
    return torch.randn(1, s, 2, 8), torch.randn(1, s_k or s, 2, 8), torch.randn(1, s_k or s, 2, 8)


def test_no_active_layer_falls_through():
    q, k, v = qkv()
    assert route_attention(original, q, k, v).abs().max() == 0


def test_sparse_when_understood(active):
    q, k, v = qkv()
    assert (route_attention(original, q, k, v, attn_mask=None, parallel_config=None) == 7).all()
    assert active.counts["sparse"] == 1


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (dict(parallel_config=types.SimpleNamespace(context_parallel_config=object())), "context_parallel"),
        (_cp(ring_degree=2, ulysses_degree=1), "ring"),
        (_cp(ring_degree=2, ulysses_degree=2), "ring"),
        (dict(attn_mask=torch.ones(16, 16, dtype=torch.bool)), "attn_mask"),
        (dict(is_causal=True), "dropout_causal_or_gqa"),
        (dict(unknown_kw=1), "call_signature"),
    ],
    ids=["context_parallel", "ring", "ulysses_x_ring", "attn_mask", "causal", "unknown_kwarg"],
)
def test_fallbacks(active, kwargs, reason):
    q, k, v = qkv()
    assert route_attention(original, q, k, v, **kwargs).abs().max() == 0
    assert active.counts[f"fallback:{reason}"] == 1


def test_cross_attention_and_layout_mismatch_fall_back(active):
    q, k, v = qkv(16, 5)
    assert route_attention(original, q, k, v).abs().max() == 0
    q, k, v = qkv(12)
    assert route_attention(original, q, k, v).abs().max() == 0
    assert active.counts["fallback:cross_attention"] == 1 and active.counts["fallback:layout_mismatch"] == 1


def test_autograd_falls_back(active):
    q, k, v = qkv()
    q.requires_grad_(True)
    assert route_attention(original, q, k, v).abs().max() == 0
    assert active.counts["fallback:autograd"] == 1


def test_sdpa_route_runs_a_processor_that_calls_sdpa_directly():
    """AttnProcessor2_0 (PixArt, ...) calls F.scaled_dot_product_attention with [B, H, S, D]: the router hands the
    core [B, S, H, D] and gives the processor its own layout back; torch itself is never patched."""
    from diffusers.models import attention_processor as ap

    from accel.hosts import diffusers_internals as di
    from accel.hosts.diffusers import route_sdpa

    class Marked:
        def attend(self, q, k, v, step, layer, scale, stats):
            stats.add("sparse")
            return q * 0 + torch.arange(q.shape[2], dtype=q.dtype).view(1, 1, -1, 1)  # head index, [B, S, H, D]

    attn = ap.Attention(query_dim=16, heads=2, dim_head=8, processor=ap.AttnProcessor2_0()).eval()
    x = torch.randn(1, 16, 16)
    torch.set_grad_enabled(False)  # (restored below) calls that need autograd keep the original attention
    ref = attn(x)
    stats = Stats()
    di.install_call_site(ap.__name__, route_sdpa, "sdpa")
    try:
        assert ap.F is not torch.nn.functional and ap.F.gelu is torch.nn.functional.gelu
        assert torch.nn.functional.scaled_dot_product_attention.__module__ == "torch._C._nn"
        assert torch.equal(attn(x), ref)  # no accelerated layer current: the original runs
        t1 = CURRENT_LAYER.set(LayerPlan(LayerKey("transformer", 0), Marked(), stats))
        t2 = CURRENT_STEP.set(StepInfo(5, 10, "cond", TokenLayout(1, 4, 4)))
        try:
            out = attn(x)
            masked = attn(x, attention_mask=torch.ones(1, 16, dtype=torch.bool))
        finally:
            CURRENT_LAYER.reset(t1)
            CURRENT_STEP.reset(t2)
    finally:
        di.uninstall_call_site(ap.__name__, "sdpa")
        torch.set_grad_enabled(True)
    assert ap.F is torch.nn.functional
    heads = torch.tensor([0.0] * 8 + [1.0] * 8)  # what the method returned, merged back to [B, S, H * D]
    with torch.no_grad():
        want = attn.to_out[0](heads.expand(1, 16, 16))
    torch.testing.assert_close(out, want)
    assert stats.counts["sparse"] == 1 and stats.counts["fallback:attn_mask"] == 1
    torch.testing.assert_close(masked, ref)
