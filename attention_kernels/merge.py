"""Log-sum-exp merge of attention partials computed over disjoint key sets."""

from __future__ import annotations

import torch


def merge_attention(
    o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor, lse2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine ``softmax`` attention over keys K1 and over keys K2 into attention over K1 ∪ K2.

    o1, o2 ``[B, S, H, D]``; lse1, lse2 natural-log ``[B, H, S]`` fp32. A partial with LSE ``-inf`` (no keys)
    contributes nothing; if both are ``-inf`` the row is zeros with LSE ``-inf``. Returns ``(out, lse)``.
    """
    if o1.shape != o2.shape or lse1.shape != lse2.shape:
        raise ValueError(f"merge_attention: shapes differ {tuple(o1.shape)} vs {tuple(o2.shape)}")
    lse1 = lse1.float()
    lse2 = lse2.float()
    hi = torch.maximum(lse1, lse2)
    hi_safe = torch.where(torch.isfinite(hi), hi, torch.zeros_like(hi))
    # Weights relative to the larger LSE stay in [0, 1], so nothing overflows.
    w1 = torch.exp(lse1 - hi_safe)
    w2 = torch.exp(lse2 - hi_safe)
    total = w1 + w2
    lse = hi_safe + torch.log(total)  # log(0) = -inf for rows with no keys at all
    denom = torch.where(total > 0, total, torch.ones_like(total))
    a1 = (w1 / denom).transpose(1, 2)[..., None]
    a2 = (w2 / denom).transpose(1, 2)[..., None]
    out = torch.addcmul(o1.float() * a1, o2.float(), a2)
    return out.to(o1.dtype), lse
