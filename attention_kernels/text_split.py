"""Joint attention with text, split: the video queries' sparse attention over video keys merged by LSE with their
dense attention over the text keys, and the text queries dense over every key (Radial Attention's HunyuanVideo
processor computes joint attention this way).

It equals one block-sparse call over the joint sequence whose text rows and columns are dense, up to block
granularity at the text/video boundary (here text is exactly the text tokens; a joint mask's text blocks may hold
some video tokens). Which of the two is faster depends on the text's share of the work: with 512 text tokens on a
4,096-token image (Flux 1024) the dense text parts run on dense kernels and the split measured 1.5x faster on CPU;
with a few hundred text tokens on a long video the one call wins (benchmarks/results/text_blocks_cpu.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .api import block_sparse_attention
from .block_mask import BlockMask
from .layout import TokenLayout
from .merge import merge_attention
from .permute import TokenPermutation


def permuted_attention(q, k, v, mask: BlockMask, perm: TokenPermutation | None, **kwargs):
    """:func:`block_sparse_attention` with ``mask`` over the token order ``perm`` gives (None: as they are): q, k, v
    are permuted before the call, the output (and LSE) inverted after, so callers see the original order."""
    if perm is None:
        return block_sparse_attention(q, k, v, mask, **kwargs)
    res = block_sparse_attention(*(perm.apply(t, dim=1) for t in (q, k, v)), mask, **kwargs)
    if kwargs.get("return_lse"):
        return perm.invert(res[0], dim=1), perm.invert(res[1], dim=2)
    return perm.invert(res, dim=1)


def text_split_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: TokenLayout,
    video_mask: BlockMask,
    *,
    scale: float | None = None,
    backend: str = "auto",
    return_lse: bool = False,
    require_keys: bool = False,
    video_perm: TokenPermutation | None = None,
):
    """q/k/v ``[B, S, H, D]`` over ``layout`` (which has text); ``video_mask`` covers ``layout.video_only()``, in the
    order ``video_perm`` gives the video tokens (None: as they are).

    Returns ``out [B, S, H, D]`` (and the joint LSE ``[B, H, S]`` fp32 with ``return_lse``). ``require_keys``
    applies to the video mask (see :func:`block_sparse_attention`); the text keys are attended by every query anyway.
    """
    if not layout.text_len:
        raise ValueError(f"text_split_attention needs a layout with text, got {layout}")
    vs, ts = layout.video_slice, layout.text_slice
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    qv, kv, vv = q[:, vs], k[:, vs], v[:, vs]
    kt, vt = k[:, ts], v[:, ts]
    o_vv, lse_vv = permuted_attention(
        qv, kv, vv, video_mask, video_perm, scale=scale, backend=backend, return_lse=True, require_keys=require_keys
    )
    bs = video_mask.block_size
    text_keys = BlockMask.full(video_mask.num_q_blocks, -(-layout.text_len // bs), bs, device=q.device)
    o_vt, lse_vt = block_sparse_attention(qv, kt, vt, text_keys, scale=scale, backend=backend, return_lse=True)
    o_v, lse_v = merge_attention(o_vv, lse_vv, o_vt, lse_vt)
    out = torch.empty_like(q)
    out[:, vs] = o_v
    qt = q[:, ts]
    if return_lse:
        full = BlockMask.full(-(-layout.text_len // bs), -(-layout.num_tokens // bs), bs, device=q.device)
        o_t, lse_t = block_sparse_attention(qt, k, v, full, scale=scale, backend=backend, return_lse=True)
        out[:, ts] = o_t
        lse = torch.empty(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32, device=q.device)
        lse[:, :, vs], lse[:, :, ts] = lse_v, lse_t
        return out, lse
    # Text queries attend every key: the host's own dense attention.
    out[:, ts] = F.scaled_dot_product_attention(
        qt.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale
    ).transpose(1, 2)
    return out
