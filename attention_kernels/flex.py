"""FlexAttention backend for block-sparse attention (any device torch.compile supports)."""

from __future__ import annotations

import functools
import weakref

import torch

from .block_mask import BlockMask

_FLEX_MASKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # dynamic=False: one specialised kernel per shape; mask shapes are static per layout anyway.
    return torch.compile(flex_attention, dynamic=False)


def _flex_block_mask(mask: BlockMask, q_len: int, k_len: int, device: torch.device):
    """torch's BlockMask for ours, cached on our mask object (built once per mask, reused every call)."""
    from torch.nn.attention.flex_attention import BlockMask as TorchBlockMask

    per_mask = _FLEX_MASKS.setdefault(mask, {})
    key = (q_len, k_len, str(device))
    if key not in per_mask:
        m = mask.to(device)
        per_mask[key] = TorchBlockMask.from_kv_blocks(
            m.kv_num_blocks, m.kv_indices, BLOCK_SIZE=m.block_size, seq_lengths=(q_len, k_len)
        )
    return per_mask[key]


def flex_block_sparse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask, scale: float, return_lse: bool
):
    """q ``[B, Sq, H, D]``, k/v ``[B, Sk, H, D]`` -> out ``[B, Sq, H, D]`` (and lse ``[B, H, Sq]``)."""
    if return_lse and q.device.type == "cpu":
        # Inductor's CPU flex kernel cannot return the LSE (torch 2.13); use the gathered-blocks path instead.
        return gathered_block_sparse(q, k, v, mask, scale)
    fbm = _flex_block_mask(mask, q.shape[1], k.shape[1], q.device)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    if torch.compiler.is_compiling():
        from torch.nn.attention.flex_attention import flex_attention as fn  # the outer graph compiles it
    else:
        fn = _compiled_flex()
    kwargs = {}
    if return_lse:
        from torch.nn.attention.flex_attention import AuxRequest

        kwargs["return_aux"] = AuxRequest(lse=True)
    if torch.compiler.is_compiling():
        res = fn(qt, kt, vt, block_mask=fbm, scale=scale, **kwargs)
    else:
        # Never let dynamo fall back to eager flex silently after too many recompiles: its eager path does not
        # honour index-built block masks (torch 2.13), so a fallback would be wrong rather than slow.
        with torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True):
            res = fn(qt, kt, vt, block_mask=fbm, scale=scale, **kwargs)
    if return_lse:
        out, aux = res
        return out.transpose(1, 2), aux.lse.float()
    return res.transpose(1, 2)


def gathered_block_sparse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockMask,
    scale: float,
    q_blocks_per_chunk: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse attention in plain torch: gather each query block's kept key blocks, attend in fp32.

    Work and memory scale with the kept blocks (not with Sq x Sk). Used where a fused kernel cannot return the
    LSE. Returns ``(out [B, Sq, H, D], lse [B, H, Sq])``.
    """
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    bs = mask.block_size
    QB, KB = mask.num_q_blocks, mask.num_k_blocks
    m = mask.to(q.device)
    counts = m.kv_num_blocks.expand(B, H, QB)
    indices = m.kv_indices.expand(B, H, QB, KB)
    maxn = max(int(counts.max().item()), 1)
    indices = indices[..., :maxn].long()

    def blocks(t, n_blocks):  # [B, S, H, D] -> [B, H, n_blocks, bs, D] fp32, zero-padded tail
        t = t.float().transpose(1, 2)
        pad = n_blocks * bs - t.shape[2]
        if pad:
            t = torch.nn.functional.pad(t, (0, 0, 0, pad))
        return t.reshape(B, H, n_blocks, bs, D)

    qb, kb, vb = blocks(q, QB), blocks(k, KB), blocks(v, KB)
    key_valid = (torch.arange(KB * bs, device=q.device) < Sk).reshape(KB, bs)
    out = torch.empty(B, H, QB, bs, D, device=q.device)
    lse = torch.empty(B, H, QB, bs, device=q.device)
    bidx = torch.arange(B, device=q.device)[:, None, None, None]
    hidx = torch.arange(H, device=q.device)[None, :, None, None]
    for start in range(0, QB, q_blocks_per_chunk):
        sl = slice(start, min(start + q_blocks_per_chunk, QB))
        idx = indices[:, :, sl]  # [B, H, c, n]
        kg = kb[bidx, hidx, idx]  # [B, H, c, n, bs, D]
        vg = vb[bidx, hidx, idx]
        c, n = idx.shape[2], idx.shape[3]
        kg = kg.reshape(B, H, c, n * bs, D)
        vg = vg.reshape(B, H, c, n * bs, D)
        s = torch.matmul(qb[:, :, sl], kg.transpose(-1, -2)) * scale  # [B, H, c, bs, n*bs]
        slot_ok = torch.arange(n, device=q.device) < counts[:, :, sl, None]  # [B, H, c, n]
        ok = slot_ok[..., None] & key_valid[idx]  # [B, H, c, n, bs]
        s = s.masked_fill(~ok.reshape(B, H, c, 1, n * bs), float("-inf"))
        row_lse = torch.logsumexp(s, dim=-1)
        safe = torch.where(torch.isfinite(row_lse), row_lse, torch.zeros_like(row_lse))
        out[:, :, sl] = torch.matmul(torch.exp(s - safe[..., None]), vg)
        lse[:, :, sl] = row_lse
    out = out.reshape(B, H, QB * bs, D)[:, :, :Sq].transpose(1, 2).to(q.dtype)
    return out, lse.reshape(B, H, QB * bs)[:, :, :Sq]
