"""Radial attention's static energy-decay block mask (Radial Attention, arXiv 2506.19852).

Rule, per ordered frame pair (query frame i, key frame j, distance d = |i - j|), on frame-major video tokens
with s tokens per frame (see reference/sparse-attention-methods.md section 1.2):

1. sink: key frame 0 is attended densely by every frame (Wan; off for HunyuanVideo);
2. d <= 1: dense;
3. d >= 2: keep tokens with |c - r| <= w inside the frame pair (r, c: within-frame raster indices), where
   ``w = max(2**bl(s) / 2**bl(d) * decay, block_size)`` and ``bl`` is the bit length;
4. thinning: with ``L0 = 2**bl(s) / 2**bl(d)``, if ``L0 < 128`` the pair is kept only when ``d % int(128 / L0) == 0``;
5. token -> block: a block of a pair's token mask is kept when, of its columns with any active entry, more than
   60% have more than a third of ``block_size`` rows active. Blocks of all pairs are OR-ed.

Text tokens (when the layout has them) attend to everything and are attended by everything.
"""

from __future__ import annotations

import functools
import math

import torch

from .block_mask import BlockMask
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


def _pair_block_pattern(
    s: int, r_off: int, c_off: int, half_width: int | None, bs: int, col_ratio: float, row_ratio: float
) -> torch.Tensor:
    """Kept blocks [nR, nC] of one frame pair whose token mask starts at (r_off, c_off) inside its first block."""
    n_r = math.ceil((r_off + s) / bs)
    n_c = math.ceil((c_off + s) / bs)
    # Local (within-frame) row range of each block row: [a, b).
    rb = torch.arange(n_r)
    a = (rb * bs - r_off).clamp(min=0)
    b = ((rb + 1) * bs - r_off).clamp(max=s)
    # Local column index of every column of every block column, -1 outside the frame.
    cols = torch.arange(n_c * bs) - c_off
    in_frame = (cols >= 0) & (cols < s)
    x = cols.view(1, n_c, bs)
    a_ = a.view(n_r, 1, 1)
    b_ = b.view(n_r, 1, 1)
    if half_width is None:
        count = (b_ - a_).expand(n_r, n_c, bs)
    else:
        lo = torch.maximum(a_, x - half_width)
        hi = torch.minimum(b_, x + half_width + 1)
        count = (hi - lo).clamp(min=0)
    count = count * in_frame.view(1, n_c, bs)
    active = (count > 0).sum(-1)
    strong = (count > bs * row_ratio).sum(-1)
    return (active > 0) & (strong > col_ratio * active)


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
    f, s, bs = layout.frames, layout.tokens_per_frame, block_size
    n = math.ceil(layout.num_tokens / bs)
    dense = torch.zeros(n, n, dtype=torch.bool)
    start = layout.video_start
    patterns: dict[tuple, torch.Tensor] = {}
    for i in range(f):
        for j in range(f):
            d = abs(i - j)
            if sink and j == 0:
                width = None
            else:
                if not radial_pair_kept(s, d, thin_threshold):
                    continue
                w = radial_window(s, d, decay, bs)
                width = None if w is None else math.floor(w)
                if width is not None and width >= s - 1:
                    width = None  # the band covers the whole frame pair
            r0, c0 = start + i * s, start + j * s
            key = (width, r0 % bs, c0 % bs)
            if key not in patterns:
                patterns[key] = _pair_block_pattern(s, r0 % bs, c0 % bs, width, bs, col_ratio, row_ratio)
            p = patterns[key]
            R, C = r0 // bs, c0 // bs
            dense[R : R + p.shape[0], C : C + p.shape[1]] |= p
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
    return _to_block_mask(dense, block_size, str(device) if device is not None else "cpu")


@functools.lru_cache(maxsize=64)
def _to_block_mask(dense: torch.Tensor, block_size: int, device: str) -> BlockMask:
    # ``dense`` comes from the lru_cache above, so the same layout hands over the same tensor object (tensors
    # hash by identity): one BlockMask per layout and device.
    return BlockMask.from_dense(dense.to(device)[None, None], block_size)
