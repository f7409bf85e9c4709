"""The router hands every call it does not understand to the original attention."""

import types

import pytest
import torch
from accel.attention_kernels import TokenLayout

from accel.dispatch import route_attention
from accel.state import CURRENT_LAYER, CURRENT_STEP, LayerPlan, Stats, StepInfo


class AlwaysSparse:
    def attend(self, q, k, v, step, layer_index, scale, stats):
        stats.add("sparse")
        return torch.full_like(q, 7.0)


def original(q, k, v, **kwargs):
    return torch.zeros_like(q)


@pytest.fixture
def active():
    stats = Stats()
    t1 = CURRENT_LAYER.set(LayerPlan(3, AlwaysSparse(), stats))
    t2 = CURRENT_STEP.set(StepInfo(5, 10, "cond", TokenLayout(2, 2, 4)))
    yield stats
    CURRENT_LAYER.reset(t1)
    CURRENT_STEP.reset(t2)


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
        (dict(attn_mask=torch.ones(16, 16, dtype=torch.bool)), "attn_mask"),
        (dict(is_causal=True), "dropout_causal_or_gqa"),
        (dict(unknown_kw=1), "call_signature"),
    ],
    ids=["context_parallel", "attn_mask", "causal", "unknown_kwarg"],
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
