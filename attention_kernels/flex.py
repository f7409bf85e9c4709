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


def _key_valid_mask_mod(key_valid: torch.Tensor):
    """A mask_mod reading a bool ``[KB * block_size]`` key-valid table (padded with False past Sk)."""

    def mask_mod(b, h, q_idx, kv_idx):
        return key_valid[kv_idx]

    return mask_mod


def _flex_block_mask(mask: BlockMask, q_len: int, k_len: int, device: torch.device):
    """torch's BlockMask for ours, cached on our mask object (built once per mask, reused every call).

    Without ``key_valid`` every kept block is a partial block with a no-op mask_mod (the caller skips evaluating
    it on CPU). With ``key_valid`` the mask_mod reads the key-valid table: kept blocks whose keys are all valid
    become full blocks (no mask_mod evaluated), blocks with some padding stay partial, and blocks that are all
    padding are dropped.
    """
    from torch.nn.attention.flex_attention import BlockMask as TorchBlockMask

    per_mask = _FLEX_MASKS.setdefault(mask, {})
    key = (q_len, k_len, str(device))
    if key not in per_mask:
        m = mask.to(device)
        bs = m.block_size
        if m.key_valid is None:
            per_mask[key] = TorchBlockMask.from_kv_blocks(
                m.kv_num_blocks, m.kv_indices, BLOCK_SIZE=bs, seq_lengths=(q_len, k_len)
            )
        else:
            table = torch.zeros(m.num_k_blocks * bs, dtype=torch.bool, device=device)
            table[:k_len] = m.key_valid[:k_len]
            per_block = table.view(m.num_k_blocks, bs)
            kept = m.to_dense()
            full = BlockMask.from_dense(kept & per_block.all(-1), bs)
            partial = BlockMask.from_dense(kept & per_block.any(-1) & ~per_block.all(-1), bs)
            per_mask[key] = TorchBlockMask.from_kv_blocks(
                partial.kv_num_blocks,
                partial.kv_indices,
                full.kv_num_blocks,
                full.kv_indices,
                BLOCK_SIZE=bs,
                mask_mod=_key_valid_mask_mod(table),
                seq_lengths=(q_len, k_len),
            )
    return per_mask[key]


def flex_block_sparse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask, scale: float, return_lse: bool
):
    """q ``[B, Sq, H, D]``, k/v ``[B, Sk, H, D]`` -> out ``[B, Sq, H, D]`` (and lse ``[B, H, Sq]``)."""
    if return_lse and q.device.type == "cpu":
        # Inductor's CPU flex kernel cannot return the LSE (torch 2.13); the run path computes the same thing.
        from .sdpa_runs import sdpa_block_sparse

        return sdpa_block_sparse(q, k, v, mask, scale)
    return _flex_call(q, k, v, mask, scale, return_lse)


# A compiler boundary: a caller inside a compiled region (torch.compile of code that calls block_sparse_attention
# directly; accel's own hooks reach the kernels through a custom op and never trace them) gets one graph break here
# instead of flex_attention traced into its graph. Traced, the outer backend decides how flex runs, and
# ``aot_eager``'s eager flex ignores index-built block masks (torch 2.13): the output would silently be dense.
@torch.compiler.disable
def _flex_call(q, k, v, mask: BlockMask, scale: float, return_lse: bool):
    fbm = _flex_block_mask(mask, q.shape[1], k.shape[1], q.device)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    kwargs = {}
    if q.device.type == "cpu" and mask.key_valid is None:
        # Our mask_mod is a no-op and the CPU template handles ragged tails by size, so skip evaluating it. (With
        # key_valid the mask_mod masks padding keys and must run.)
        kwargs["kernel_options"] = {"SKIP_MASK_SCORE": True}
    if return_lse:
        from torch.nn.attention.flex_attention import AuxRequest

        kwargs["return_aux"] = AuxRequest(lse=True)
    # Never let dynamo fall back to eager flex silently after too many recompiles: its eager path does not honour
    # index-built block masks (torch 2.13), so a fallback would be wrong rather than slow.
    with torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True):
        res = _compiled_flex()(qt, kt, vt, block_mask=fbm, scale=scale, **kwargs)
    if return_lse:
        out, aux = res
        return out.transpose(1, 2), aux.lse.float()
    return res.transpose(1, 2)
