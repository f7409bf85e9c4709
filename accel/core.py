"""The host-neutral attention call: every host (diffusers, ComfyUI) translates its calling convention into this.

Data flow of one self-attention call: the host knows the current :class:`~accel.state.StepInfo` (resolved once per
transformer forward, :mod:`accel.steps`) and the current layer's :class:`~accel.state.LayerPlan` (its global
:class:`~accel.state.LayerKey`, the method and the counters); it hands ``q, k, v [B, S, H, D]`` to :func:`attend`,
which returns the method's output or ``None``, in which case the host runs its original attention. Every ``None``
is counted with its reason, here or by the method.
"""

from __future__ import annotations

import torch

from .state import LayerPlan, StepInfo


def fallback_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: StepInfo | None) -> str | None:
    """Why a self-attention call cannot take the sparse path whatever the host (None: it can)."""
    if step is None:
        return "no_step_info"
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape or q.shape[1] != k.shape[1]:
        return "cross_attention"
    if q.shape[1] != step.layout.num_tokens:
        return "layout_mismatch"
    if step.key_valid is not None and not bool(step.key_valid.all()):
        # Per-batch padded keys (joint attention with padded text) need masks per batch item: not yet expressed.
        return "key_padding"
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return "autograd"
    return None


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    step: StepInfo | None,
    layer: LayerPlan | None,
    *,
    scale: float | None = None,
) -> torch.Tensor | None:
    """Accelerated self-attention ``[B, S, H, D]`` -> ``[B, S, H, D]`` for ``layer`` at ``step``, or None.

    ``layer`` None means the call is not in an accelerated layer: None, nothing counted. Otherwise a call the core
    cannot take is counted as ``fallback:<reason>``, and the method counts its own dense decisions.
    """
    if layer is None:
        return None
    reason = fallback_reason(q, k, v, step)
    if reason is not None:
        layer.stats.add("fallback", reason)
        return None
    return layer.method.attend(q, k, v, step, layer.layer, scale, layer.stats)
