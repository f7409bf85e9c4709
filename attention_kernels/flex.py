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
        # Inductor's CPU flex kernel cannot return the LSE (torch 2.13); the gather path computes the same thing.
        from .cpu_gather import gather_block_sparse

        return gather_block_sparse(q, k, v, mask, scale)
    fbm = _flex_block_mask(mask, q.shape[1], k.shape[1], q.device)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    if torch.compiler.is_compiling():
        from torch.nn.attention.flex_attention import flex_attention as fn  # the outer graph compiles it
    else:
        fn = _compiled_flex()
    kwargs = {}
    if q.device.type == "cpu":
        # Our mask_mod is a no-op and the CPU template handles ragged tails by size, so skip evaluating it.
        kwargs["kernel_options"] = {"SKIP_MASK_SCORE": True}
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
