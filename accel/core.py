"""The host-neutral attention call: every host (diffusers, ComfyUI) translates its calling convention into this.

Data flow of one self-attention call: the host knows the current :class:`~accel.state.StepInfo` (resolved once per
transformer forward, :mod:`accel.steps`) and the current layer's :class:`~accel.state.LayerPlan` (its global
:class:`~accel.state.LayerKey`, the method and the counters); it hands ``q, k, v [B, S, H, D]`` to :func:`attend`,
with the call's key padding if it has any (``key_valid``, bool ``[B|1, S]``, from a key-only attention mask), and
gets the method's output or ``None``, in which case the host runs its original attention. Every ``None`` is counted
with its reason, here or by the method.

Joint attention with text (:class:`~accel.attention_kernels.TokenLayout` ``text_pos`` first/last):

- a call may hold fewer text tokens than the forward's layout (Mochi's processor attends each batch item over its
  valid text only): the layout's ``text_len`` follows the call;
- padded text keys (HunyuanVideo, Qwen-Image: a ``[B, 1, 1, S]`` key mask) are removed before the method runs:
  each batch item (or the whole batch, when every item has the same padding) attends over its real tokens only, a
  layout whose text is the real text, which is exactly what the key mask means. Padded query rows are computed
  densely against the real keys, as the masked original computes them. Padding inside the video tokens is not
  expressed: that call keeps the original attention (``fallback:key_padding_in_video``).
"""

from __future__ import annotations

import dataclasses

import torch
from accel.attention_kernels import TokenLayout

from .state import LayerPlan, StepInfo


def fallback_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: StepInfo | None) -> str | None:
    """Why a self-attention call cannot take the sparse path whatever the host (None: it can)."""
    if step is None:
        return "no_step_info"
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape or q.shape[1] != k.shape[1]:
        return "cross_attention"
    if call_layout(step.layout, q.shape[1]) is None:
        return "layout_mismatch"
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return "autograd"
    return None


def call_layout(layout: TokenLayout, seq_len: int) -> TokenLayout | None:
    """The layout of a call of ``seq_len`` tokens in a forward of ``layout``: the same, or with fewer text tokens
    (the video grid never changes); None when the call does not fit."""
    if seq_len == layout.num_tokens:
        return layout
    text = seq_len - layout.video_tokens
    if layout.text_pos == "none" or not 0 <= text < layout.text_len:
        return None
    return dataclasses.replace(layout, text_len=text) if text else layout.video_only()


def key_padding(step: StepInfo, key_valid: torch.Tensor | None, shape: torch.Size) -> torch.Tensor | None:
    """The call's real keys, bool ``[B, S]`` (the forward's ``step.key_valid`` and the call's mask together), or None
    when every key is real."""
    masks = [m for m in (step.key_valid, key_valid) if m is not None and m.shape[-1] == shape[1]]
    if not masks:
        return None
    valid = masks[0] if len(masks) == 1 else masks[0] & masks[1]
    if bool(valid.all()):  # one host sync per call that carries a mask
        return None
    return valid.to(torch.bool).expand(shape[0], shape[1])


def key_mask(attn_mask: torch.Tensor, batch: int, seq_len: int) -> torch.Tensor | None:
    """An SDPA-style attention mask that only says which tokens exist, as bool ``[B|1, S]``; None for any other.

    Understood:

    - bool (True = attend) or additive float (0 = attend, <= -1e4 or -inf = masked) key masks shaped
      ``[B|1, 1, 1, S]``, ``[B|1, 1, S]`` or ``[B|1, S]``, one row for every query and head (HunyuanVideo and
      Qwen-Image's padded-text masks);
    - bool ``[B|1, 1, S, S]`` masks that are the outer product ``v[:, None] & v[None, :]`` of one token-valid vector
      (HunyuanVideo 1.5): real queries attend real keys. Padded query rows are all False there; the core gives them
      attention over the real keys instead, and they only ever feed padded tokens, which no real token attends.

    Masks that differ per head or per real query, or add other biases, are not understood.
    """
    if attn_mask.shape[-1] != seq_len or attn_mask.dim() not in (2, 3, 4) or attn_mask.shape[0] not in (1, batch):
        return None
    if attn_mask.dim() == 4 and attn_mask.shape[1] == 1 and attn_mask.shape[2] == seq_len:
        return _outer_product_mask(attn_mask[:, 0])
    if any(d != 1 for d in attn_mask.shape[1:-1]):
        return None
    row = attn_mask.reshape(attn_mask.shape[0], seq_len)
    if row.dtype == torch.bool:
        return row
    if not row.is_floating_point():
        return None
    valid = row == 0
    if not bool((valid | (row <= -1e4)).all()):  # a bias that is neither 0 nor masked: not a key mask
        return None
    return valid


def _outer_product_mask(mask: torch.Tensor) -> torch.Tensor | None:
    """``v`` when bool ``mask [B, S, S]`` equals ``v[:, :, None] & v[:, None, :]``, else None.

    Checked with row and column counts, without another ``S x S`` tensor: with ``v`` the columns holding any True
    and ``n`` their number, no True can sit outside ``v``'s columns (their count is 0), so a row of ``n`` Trues holds
    every ``v`` column; rows of ``v`` with ``n`` Trues and the other rows empty is exactly the outer product.
    """
    if mask.dtype != torch.bool:
        return None
    cols = mask.sum(-2)  # [B, S]
    rows = mask.sum(-1)
    valid = cols > 0
    n = valid.sum(-1, keepdim=True)
    expect = torch.where(valid, n, torch.zeros_like(n))
    if not (torch.equal(rows, expect) and torch.equal(cols, expect)):
        return None
    return valid


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    step: StepInfo | None,
    layer: LayerPlan | None,
    *,
    scale: float | None = None,
    key_valid: torch.Tensor | None = None,
    heads: tuple[int, int] | None = None,
) -> torch.Tensor | None:
    """Accelerated self-attention ``[B, S, H, D]`` -> ``[B, S, H, D]`` for ``layer`` at ``step``, or None.

    ``heads``: ``(offset, total)`` when the call holds heads ``offset .. offset + H - 1`` of the model's ``total``
    (context parallelism, Ulysses: the full sequence with a subset of heads); None when it holds all of them.

    ``layer`` None means the call is not in an accelerated layer: None, nothing counted. Otherwise a call the core
    cannot take is counted as ``fallback:<reason>``, and the method counts its own dense decisions (once per batch
    group when padded keys split the batch).
    """
    if layer is None:
        return None
    ordinal = layer.next_call()
    reason = fallback_reason(q, k, v, step)
    if reason is not None:
        layer.stats.add("fallback", reason)
        return None
    valid = key_padding(step, key_valid, q.shape)
    offset, total = heads if heads is not None else (0, None)
    step = dataclasses.replace(
        step, layout=call_layout(step.layout, q.shape[1]), key_valid=None, call=(ordinal,), head_offset=offset,
        num_heads=total,
    )  # fmt: skip
    if valid is None:
        return layer.method.attend(q, k, v, step, layer.layer, scale, layer.stats)
    if not bool(valid[:, step.layout.video_slice].all()):
        layer.stats.add("fallback", "key_padding_in_video")
        return None
    return _attend_real_keys(q, k, v, step, layer, scale, valid)


def _attend_real_keys(q, k, v, step: StepInfo, layer: LayerPlan, scale, valid: torch.Tensor):
    """The method over each batch group's real tokens; padded query rows dense over the same real keys."""
    same = bool((valid == valid[:1]).all())
    groups = [slice(None)] if same else [slice(b, b + 1) for b in range(q.shape[0])]
    out = torch.empty_like(q)
    for part, rows in enumerate(groups):
        kv = valid[rows][0]
        real = kv.nonzero().squeeze(1)
        text = real.numel() - step.layout.video_tokens
        layout = dataclasses.replace(step.layout, text_len=text) if text else step.layout.video_only()
        sub = dataclasses.replace(step, layout=layout, call=(*step.call, part))
        qr, kr, vr = (t[rows].index_select(1, real) for t in (q, k, v))
        o = layer.method.attend(qr, kr, vr, sub, layer.layer, scale, layer.stats)
        if o is None:
            return None
        out[rows].index_copy_(1, real, o)  # rows is a slice: out[rows] is a view, written in place
        pad = (~kv).nonzero().squeeze(1)
        qp = q[rows].index_select(1, pad)
        op = torch.nn.functional.scaled_dot_product_attention(
            qp.transpose(1, 2), kr.transpose(1, 2), vr.transpose(1, 2), scale=scale
        )
        out[rows].index_copy_(1, pad, op.transpose(1, 2).to(q.dtype))
    return out
