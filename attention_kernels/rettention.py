"""Re-ttention's static window mask and its softmax-mass reshaping (Re-ttention, arXiv 2505.22918).

Token rule on frame-major video tokens (see reference/sparse-attention-methods.md section 4.2): the query at frame
``t``, within-frame raster index ``r`` attends the key at ``(t', r')`` iff ``|t - t'| <= window_frames`` and
``|r - r'| <= window_tokens``; ``window_frames=None`` keeps every frame (CogVideoX's window replicated across all
frames). Text tokens attend to everything and are attended by everything.

Re-ttention rescales the sparse output by ``rho``, the share of the full softmax mass that falls inside the mask,
taken from a recent full-attention step: ``rho = Z_S / Z_full = exp(lse_S - lse_full)``, so
``rho * softmax_S(s) V = sum_{j in S} exp(s_j - lse_full) v_j``.
"""

from __future__ import annotations

import functools
import math

import torch

from .block_mask import BlockMask, cached_block_mask, device_key
from .frame_pairs import pair_blocks
from .layout import TokenLayout, text_dense


@functools.lru_cache(maxsize=64)
def _rettention_dense(layout: TokenLayout, block_size: int, window_tokens: int, window_frames: int | None):
    """bool ``[NB, NB]``: a block is kept iff some row ``r`` and column ``c`` of a frame pair inside the window
    lie in it with ``|r - c| <= window_tokens`` (vectorised over every frame pair and block)."""
    f = layout.frames
    fi = torch.arange(f)
    near = (fi[:, None] - fi[None, :]).abs() <= (f if window_frames is None else window_frames)
    g = pair_blocks(layout, block_size, *near.nonzero(as_tuple=True))
    # Row range [a, b) and column range [c_lo, c_hi), both non-empty, hold points within the window of each other
    # iff the gap between the ranges is at most window_tokens.
    keep = (g.a < g.b) & (g.c_lo < g.c_hi)
    keep &= (g.a <= g.c_hi - 1 + window_tokens) & (g.c_lo <= g.b - 1 + window_tokens)
    return text_dense(g.scatter(keep), layout, block_size)


@functools.lru_cache(maxsize=64)
def _position_band_dense(layout: TokenLayout, block_size: int, window_tokens: int) -> torch.Tensor:
    """bool ``[NB, NB]`` over the position-major order (:func:`~.sparse_vdit.position_major_permutation`: video slot
    ``video_start + p * frames + t`` holds within-frame index ``p`` of frame ``t``): a block pair is kept iff some
    query slot and key slot in it hold within-frame indices at most ``window_tokens`` apart."""
    nb = math.ceil(layout.num_tokens / block_size)
    f, start, n_video = layout.frames, layout.video_start, layout.video_tokens
    lo = (torch.arange(nb) * block_size).clamp(start, start + n_video) - start  # video slots of each block
    hi = ((torch.arange(nb) + 1) * block_size).clamp(start, start + n_video) - start
    has_video = hi > lo
    p_lo = torch.div(lo, f, rounding_mode="floor")  # within-frame index range [p_lo, p_hi] of each block
    p_hi = torch.div(hi - 1, f, rounding_mode="floor")
    keep = has_video[:, None] & has_video[None, :]
    keep &= (p_lo[None, :] <= p_hi[:, None] + window_tokens) & (p_lo[:, None] <= p_hi[None, :] + window_tokens)
    return text_dense(keep, layout, block_size)


def rettention_position_mask(
    layout: TokenLayout, block_size: int = 128, window_tokens: int = 128, *, device: torch.device | str | None = None
) -> BlockMask:
    """Re-ttention's every-frame window (``window_frames=None``) as a :class:`BlockMask` over the **position-major**
    token order: the same token rule as :func:`rettention_mask`, but there the window repeated in every frame is
    scattered over every frame pair, while in position-major order it is one band of about ``2 * window_tokens *
    frames`` slots, so whole blocks waste far less (CogVideoX-2B at 64-token blocks: 15% -> 4% of the map). Apply
    :func:`~.sparse_vdit.position_major_permutation` to q, k, v and invert it on the output. Cached by its arguments.
    """
    if window_tokens < 0:
        raise ValueError(f"window_tokens must be >= 0, got {window_tokens}")
    dense = _position_band_dense(layout, int(block_size), int(window_tokens))
    return cached_block_mask(dense, int(block_size), device_key(device))


def rettention_mask(
    layout: TokenLayout,
    block_size: int = 128,
    window_tokens: int = 128,
    window_frames: int | None = 1,
    *,
    device: torch.device | str | None = None,
) -> BlockMask:
    """Re-ttention's window as a :class:`BlockMask` ``[1, 1, QB, KB]`` (``ceil(num_tokens / block_size)`` blocks).

    A block pair is kept iff any token pair inside it satisfies the token rule (module docstring), so the block mask
    contains the token rule; the kernels attend whole kept blocks. Cached by its arguments.
    """
    if window_tokens < 0:
        raise ValueError(f"window_tokens must be >= 0, got {window_tokens}")
    if window_frames is not None and window_frames < 0:
        raise ValueError(f"window_frames must be >= 0 or None, got {window_frames}")
    wf = None if window_frames is None else int(window_frames)
    dense = _rettention_dense(layout, int(block_size), int(window_tokens), wf)
    return cached_block_mask(dense, int(block_size), device_key(device))


def mass_ratio(lse_sparse: torch.Tensor, lse_full: torch.Tensor) -> torch.Tensor:
    """``rho = exp(lse_sparse - lse_full)``: the share of full softmax mass inside the mask, fp32 ``[B, H, S]``.

    Clamped to ``[0, 1]`` (rounding can push it just above 1); rows with ``lse_sparse = -inf`` (nothing kept) give 0.
    """
    if lse_sparse.shape != lse_full.shape:
        raise ValueError(f"lse shapes differ: {tuple(lse_sparse.shape)} vs {tuple(lse_full.shape)}")
    ls, lf = lse_sparse.float(), lse_full.float()
    kept = torch.isfinite(ls)
    rho = torch.exp(torch.where(kept, ls, lf) - lf)
    return torch.where(kept, rho, torch.zeros_like(rho)).clamp(0.0, 1.0)


def reshape_sparse(out_sparse: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """Rescale a sparse attention output by its mass ratio: ``out [B, S, H, D] * rho [B, H, S]``.

    Computed in fp32, returned in ``out_sparse``'s dtype.
    """
    B, S, H, _ = out_sparse.shape
    if rho.shape != (B, H, S):
        raise ValueError(f"rho must be [B, H, S] = {(B, H, S)} for out [B, S, H, D], got {tuple(rho.shape)}")
    return (out_sparse.float() * rho.float().transpose(1, 2)[..., None]).to(out_sparse.dtype)
