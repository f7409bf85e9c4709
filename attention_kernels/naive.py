"""Dense fp32 references: the oracles for the kernels and the LSE merge."""

from __future__ import annotations

import torch

from .block_mask import BlockMask


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockMask,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked softmax attention computed densely in fp32.

    q ``[B, Sq, H, D]``, k/v ``[B, Sk, H, D]``. Returns ``(out [B, Sq, H, D] in q.dtype, lse [B, H, Sq] fp32)``.
    The token mask (:meth:`BlockMask.token_mask`) includes ``mask.key_valid``: padding keys are never attended.
    Rows with no kept key give zeros and LSE ``-inf``.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
    tok = mask.to(q.device).token_mask(q.shape[1], k.shape[1])  # [B|1, H|1, Sq, Sk]
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~tok, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # -inf on empty rows
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    probs = torch.exp(scores - safe[..., None])  # exp(-inf) = 0 on masked entries and empty rows
    out = torch.matmul(probs, vf)
    return out.transpose(1, 2).to(q.dtype), lse


def reference_merge(
    o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor, lse2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two attention partials over disjoint key sets, in fp32 with explicit softmax weights."""
    lse = torch.logaddexp(lse1, lse2)
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    w1 = torch.exp(lse1 - safe).transpose(1, 2)[..., None]  # [B, S, H, 1]
    w2 = torch.exp(lse2 - safe).transpose(1, 2)[..., None]
    out = o1.float() * w1 + o2.float() * w2
    return out.to(o1.dtype), lse
