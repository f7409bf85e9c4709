"""Radial attention's static energy-decay block mask (Radial Attention, arXiv 2506.19852).

Rule, per ordered frame pair (query frame i, key frame j, distance d = |i - j|), on frame-major video tokens
with s tokens per frame (see reference/sparse-attention-methods.md section 1.2):

1. sink: key frame 0 is attended densely by every frame (Wan; off for HunyuanVideo);
2. d <= 1: dense;
3. d >= 2: keep tokens with |c - r| <= w inside the frame pair (r, c: within-frame raster indices), where
   ``w = max(2**bl(s) / 2**bl(d) * decay, block_size)`` and ``bl`` is the bit length;
4. thinning: with ``L0 = 2**bl(s) / 2**bl(d)``, if ``L0 < 128`` the pair is kept only when ``d % int(128 / L0) == 0``;
5. token -> block: a block of a pair's token mask is kept when, of its columns with any active entry, more than
   60% have more than a third of the block's rows active (``block_size`` rows, fewer only in the sequence's
   partial last block). Blocks of all pairs are OR-ed.
6. every diagonal block is kept (a block's tokens attend their own frame densely), so no query block is empty.

Text tokens (when the layout has them) attend to everything and are attended by everything.
"""

from __future__ import annotations

import functools
import math

import torch

from .block_mask import BlockMask, cached_block_mask, device_key
from .frame_pairs import pair_blocks
from .layout import TokenLayout, text_dense


def _bit_length(x: int) -> int:
    return int(x).bit_length()


def radial_window(tokens_per_frame: int, distance: int, decay: float, block_size: int) -> float | None:
    """Band half-width in tokens for a frame pair at ``distance`` (None: dense)."""
    if distance <= 1:
        return None
    span = 2 ** _bit_length(tokens_per_frame) / 2 ** _bit_length(distance)
    return max(span * decay, float(block_size))


def radial_pair_kept(tokens_per_frame: int, distance: int, thin_threshold: int = 128) -> bool:
    """Periodic skipping of far frame pairs once the undecayed window drops under ``thin_threshold``."""
    if distance <= 1:
        return True
    span = 2 ** _bit_length(tokens_per_frame) / 2 ** _bit_length(distance)
    if span >= thin_threshold:
        return True
    return distance % int(thin_threshold / span) == 0


def _columns_above(
    a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, c_lo: torch.Tensor, c_hi: torch.Tensor, thr: torch.Tensor
) -> torch.Tensor:
    """Columns ``x`` in ``[c_lo, c_hi)`` with more than ``thr`` rows ``r`` in ``[a, b)`` such that ``|x - r| <= w``.

    All arguments broadcast; integers except ``thr`` (float). The rows of column ``x`` inside the band are
    ``[max(a, x - w), min(b, x + w + 1))``; their count exceeds ``thr`` iff ``b - a > thr``, ``2w + 1 > thr``,
    ``x > a - w - 1 + thr`` and ``x < b + w - thr`` (a difference of a min and a max exceeds ``thr`` iff all four
    differences do), so the columns that pass form one integer interval.
    """
    lo = torch.maximum(c_lo.double(), torch.floor(a - w - 1 + thr) + 1)
    hi = torch.minimum(c_hi.double(), torch.ceil(b + w - thr))
    ok = ((b - a) > thr) & ((2 * w + 1) > thr)
    return torch.where(ok, (hi - lo).clamp(min=0), torch.zeros_like(lo))


@functools.lru_cache(maxsize=64)
def _radial_dense(
    layout: TokenLayout,
    block_size: int,
    decay: float,
    sink: bool,
    thin_threshold: int,
    col_ratio: float,
    row_ratio: float,
) -> torch.Tensor:
    """bool ``[NB, NB]`` over the whole sequence; vectorised over every frame pair and block (no per-pair loop)."""
    f, s, bs = layout.frames, layout.tokens_per_frame, block_size
    # Per frame distance: whether the pair is kept and its band half-width (s: the whole frame pair).
    width_d, kept_d = [], []
    for d in range(f):
        w = radial_window(s, d, decay, bs)
        width_d.append(s if w is None or math.floor(w) >= s - 1 else math.floor(w))
        kept_d.append(radial_pair_kept(s, d, thin_threshold))
    fi = torch.arange(f)
    dist = (fi[:, None] - fi[None, :]).abs()
    width = torch.tensor(width_d)[dist]
    kept = torch.tensor(kept_d)[dist]
    if sink:
        width[:, 0], kept[:, 0] = s, True
    qi, kj = kept.nonzero(as_tuple=True)  # [P] query frame, key frame of every kept pair
    g = pair_blocks(layout, bs, qi, kj)
    w = width[qi, kj].view(-1, 1, 1).double()
    a, b = g.a.double(), g.b.double()
    active = _columns_above(a, b, w, g.c_lo, g.c_hi, torch.zeros((), dtype=torch.float64))
    # The sequence's last block may be partial, and its tokens belong to their frames like any other: the
    # one-third row rule is taken of the rows a block really holds, not of block_size.
    strong = _columns_above(a, b, w, g.c_lo, g.c_hi, g.real_rows.double() * row_ratio)
    dense = g.scatter((active > 0) & (strong > col_ratio * active))
    # Every query block attends at least its own block: its tokens sit in frame pairs at distance 0.
    dense.fill_diagonal_(True)
    return text_dense(dense, layout, bs)


def radial_mask(
    layout: TokenLayout,
    block_size: int = 128,
    decay: float = 1.0,
    *,
    sink: bool = True,
    thin_threshold: int = 128,
    col_ratio: float = 0.6,
    row_ratio: float = 1.0 / 3.0,
    device: torch.device | str | None = None,
) -> BlockMask:
    """Radial attention's block mask for ``layout`` (same for every batch element and head).

    Returns a :class:`BlockMask` of ``ceil(num_tokens / block_size)`` blocks per side. ``sink`` makes every frame
    attend densely to the first latent frame (published Wan setting). Built masks are cached by their arguments.
    """
    if decay <= 0:
        raise ValueError(f"decay must be > 0, got {decay}")
    dense = _radial_dense(layout, block_size, float(decay), bool(sink), thin_threshold, col_ratio, row_ratio)
    return cached_block_mask(dense, block_size, device_key(device))
