"""Block geometry of frame pairs: where each (query frame, key frame) token square falls on the block grid.

Radial and Re-ttention masks are rules per frame pair on frame-major video tokens. For a batch of ``P`` frame pairs
:func:`pair_blocks` gives, for every block a pair's ``s x s`` token square touches, its global block row and column
and the within-frame token ranges it covers, so a mask builder decides all blocks of all pairs in a few tensor ops
(no Python loop over pairs) and scatters the kept ones into the ``[NB, NB]`` grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .layout import TokenLayout


@dataclass(frozen=True)
class PairBlocks:
    """Blocks touched by ``P`` frame pairs; tensors broadcast to ``[P, span, span]``.

    ``R`` ``[P, span, 1]`` / ``C`` ``[P, 1, span]``: global block row / column. ``a, b`` ``[P, span, 1]``: the
    within-frame query rows ``[a, b)`` of block row ``R``; ``c_lo, c_hi`` ``[P, 1, span]``: the key columns
    ``[c_lo, c_hi)`` of block column ``C`` (an empty range where the block lies outside the frame).
    ``real_rows`` ``[P, span, 1]``: tokens the sequence really has in block row ``R`` (``block_size`` except in a
    partial last block, 0 past the end).
    """

    R: torch.Tensor
    C: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    c_lo: torch.Tensor
    c_hi: torch.Tensor
    real_rows: torch.Tensor
    num_blocks: int

    def scatter(self, keep: torch.Tensor) -> torch.Tensor:
        """OR the kept blocks ``keep`` (bool, broadcast to ``[P, span, span]``) into a new bool ``[NB, NB]``."""
        nb = self.num_blocks
        keep = keep & (self.R < nb) & (self.C < nb)
        dense = torch.zeros(nb * nb, dtype=torch.bool)
        dense[(self.R * nb + self.C).expand_as(keep)[keep]] = True
        return dense.view(nb, nb)


def pair_blocks(layout: TokenLayout, block_size: int, q_frame: torch.Tensor, k_frame: torch.Tensor) -> PairBlocks:
    """Geometry of the frame pairs ``(q_frame[p], k_frame[p])`` (int64 ``[P]``) of ``layout`` on ``block_size``."""
    s, bs = layout.tokens_per_frame, block_size
    r0 = (layout.video_start + q_frame * s).view(-1, 1, 1)
    c0 = (layout.video_start + k_frame * s).view(-1, 1, 1)
    off = torch.arange(math.ceil((bs - 1 + s) / bs))  # the most blocks one frame touches
    R = torch.div(r0, bs, rounding_mode="floor") + off.view(1, -1, 1)
    C = torch.div(c0, bs, rounding_mode="floor") + off.view(1, 1, -1)
    return PairBlocks(
        R=R,
        C=C,
        a=(R * bs - r0).clamp(0, s),
        b=((R + 1) * bs - r0).clamp(0, s),
        c_lo=(C * bs - c0).clamp(0, s),
        c_hi=((C + 1) * bs - c0).clamp(0, s),
        real_rows=(layout.num_tokens - R * bs).clamp(0, bs),
        num_blocks=math.ceil(layout.num_tokens / bs),
    )
