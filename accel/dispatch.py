"""Routes a model's attention call to the active layer's method, or to the original attention."""

from __future__ import annotations

import torch

from .state import CURRENT_LAYER, CURRENT_STEP

_SUPPORTED_KWARGS = {
    "attn_mask",
    "dropout_p",
    "is_causal",
    "scale",
    "enable_gqa",
    "attention_kwargs",
    "backend",
    "parallel_config",
}


def _fallback_reason(args, kwargs, step) -> str | None:
    """Why this call cannot take the sparse path (None: it can). Never guess: anything unknown goes dense."""
    if step is None:
        return "no_step_info"
    if len(args) != 3 or set(kwargs) - _SUPPORTED_KWARGS:
        return "call_signature"
    if kwargs.get("parallel_config") is not None:
        # Context parallelism hands each rank a shard of the sequence: a mask built for the full grid would be
        # wrong there. Until sparse attention composes with the CP templates, use the original attention.
        return "context_parallel"
    if kwargs.get("attn_mask") is not None:
        return "attn_mask"
    if kwargs.get("dropout_p", 0.0) or kwargs.get("is_causal", False) or kwargs.get("enable_gqa", False):
        return "dropout_causal_or_gqa"
    if kwargs.get("attention_kwargs"):
        return "attention_kwargs"
    q, k, v = args
    if q.dim() != 4 or k.shape != v.shape or q.shape[1] != k.shape[1]:
        return "cross_attention"
    if q.shape[1] != step.layout.num_tokens:
        return "layout_mismatch"
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return "autograd"
    return None


def route_attention(original, *args, **kwargs):
    layer = CURRENT_LAYER.get()
    if layer is None:
        return original(*args, **kwargs)
    step = CURRENT_STEP.get()
    reason = _fallback_reason(args, kwargs, step)
    if reason is not None:
        layer.stats.add("fallback", reason)
        return original(*args, **kwargs)
    q, k, v = args
    out = layer.method.attend(q, k, v, step, layer.layer_index, kwargs.get("scale"), layer.stats)
    if out is None:
        return original(*args, **kwargs)
    return out
