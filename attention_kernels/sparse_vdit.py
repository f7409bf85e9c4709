"""Sparse-vDiT's per-head static attention patterns (Sparse-vDiT, arXiv 2506.03065).

Every attention head of a layer gets one pattern, chosen offline (see reference/sparse-attention-methods.md
section 3): ``full``, ``diagonal`` (a block band: local, mostly intra-frame attention), ``multidiagonal`` (the
same spatial position across nearby frames: a band over the *position-major* token order), ``stripe`` (a band
plus a few key blocks every query attends) or ``skip`` (the head outputs zeros).

Block masks are built over ``ceil(num_tokens / block_size)`` blocks per side in the order the pattern runs on.
Text tokens stay dense: in every pattern but ``skip``, the rows and columns of blocks holding any text token are
kept. Heads sharing a token order run in one :func:`block_sparse_attention` launch with per-head masks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .api import block_sparse_attention
from .block_mask import BlockMask
from .layout import TokenLayout, text_dense
from .permute import TokenPermutation

PATTERN_KINDS = ("full", "diagonal", "multidiagonal", "stripe", "skip")
ORDERS = ("natural", "position")
_BANDED = ("diagonal", "multidiagonal", "stripe")


@dataclass(frozen=True)
class HeadPattern:
    """One head's pattern.

    ``width``: band half-width in blocks (``diagonal``, ``multidiagonal`` and the band of ``stripe``; 0 otherwise).
    ``columns``: key blocks (natural token order) every query block attends, ``stripe`` only; stored sorted and
    unique whatever order they are given in.
    """

    kind: str
    width: int = 0
    columns: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in PATTERN_KINDS:
            raise ValueError(f"pattern kind must be one of {PATTERN_KINDS}, got {self.kind!r}")
        if int(self.width) != self.width or self.width < 0:
            raise ValueError(f"pattern width must be an integer >= 0, got {self.width!r}")
        if self.kind not in _BANDED and self.width:
            raise ValueError(f"a {self.kind!r} pattern takes no width, got {self.width}")
        columns = tuple(sorted({int(c) for c in self.columns}))
        if columns and self.kind != "stripe":
            raise ValueError(f"only 'stripe' patterns take columns, got {self.kind!r} with {columns}")
        if columns and columns[0] < 0:
            raise ValueError(f"stripe columns must be >= 0, got {columns}")
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "columns", columns)

    def order(self) -> str:
        """Token order the pattern runs on: ``"position"`` for ``multidiagonal``, else ``"natural"``."""
        return "position" if self.kind == "multidiagonal" else "natural"

    def to_json(self) -> dict:
        return {"kind": self.kind, "width": self.width, "columns": list(self.columns)}

    @classmethod
    def from_json(cls, d: dict) -> HeadPattern:
        return cls(str(d["kind"]), int(d.get("width", 0)), tuple(d.get("columns", ())))


@functools.lru_cache(maxsize=64)
def position_major_permutation(layout: TokenLayout) -> TokenPermutation:
    """Video tokens from frame-major ``(t, p)`` to position-major ``(p, t)``, ``p = h * width + w``.

    Slot ``video_start + p * frames + t`` holds token ``video_start + t * tokens_per_frame + p``; text tokens keep
    their slots. No padding: ``Lp == L``.
    """
    f, s, start = layout.frames, layout.tokens_per_frame, layout.video_start
    src = torch.arange(layout.num_tokens)
    src[layout.video_slice] = torch.arange(f * s).view(f, s).t().reshape(-1) + start
    return TokenPermutation(src, layout.num_tokens)


@functools.lru_cache(maxsize=512)
def pattern_block_mask(pattern: HeadPattern, layout: TokenLayout, block_size: int = 128) -> torch.Tensor:
    """bool ``[QB, KB]`` (``QB = KB = ceil(num_tokens / block_size)``, CPU) in the order ``pattern.order()`` names.

    Cached: the returned tensor is shared, do not modify it.
    """
    n = math.ceil(layout.num_tokens / block_size)
    if pattern.kind == "skip":
        return torch.zeros(n, n, dtype=torch.bool)
    if pattern.kind == "full":
        return torch.ones(n, n, dtype=torch.bool)
    b = torch.arange(n)
    mask = (b[:, None] - b[None, :]).abs() <= pattern.width
    if pattern.kind == "stripe" and pattern.columns:
        if pattern.columns[-1] >= n:
            raise ValueError(f"stripe column {pattern.columns[-1]} is out of range for {n} key blocks")
        mask[:, list(pattern.columns)] = True
    # Text blocks are the same in both orders: the position-major permutation is the identity on text.
    return text_dense(mask, layout, block_size)


@functools.lru_cache(maxsize=4096)
def pattern_density(pattern: HeadPattern, layout: TokenLayout, block_size: int = 128) -> float:
    """Fraction of (query block, key block) pairs the pattern keeps: its share of dense attention FLOPs."""
    return float(pattern_block_mask(pattern, layout, block_size).float().mean().item())


def stripe_columns(mass: torch.Tensor, k: int) -> tuple[int, ...]:
    """The ``k`` key blocks with the largest ``mass`` (``[KB]``), sorted ascending; ties go to the lower block."""
    if mass.dim() != 1:
        raise ValueError(f"stripe_columns expects a 1-D [KB] tensor, got shape {tuple(mass.shape)}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    order = torch.sort(mass.detach().float().cpu(), descending=True, stable=True).indices
    return tuple(sorted(int(i) for i in order[:k]))


@dataclass(frozen=True)
class HeadGroup:
    """Heads sharing a token order: ``heads`` (indices into H, ascending), their index tensor on the mask's
    device, and ``mask``, a :class:`BlockMask` ``[1, len(heads), QB, KB]`` with one mask per head in that order."""

    order: str
    heads: tuple[int, ...]
    head_index: torch.Tensor
    mask: BlockMask


@functools.lru_cache(maxsize=256)
def _head_groups(
    patterns: tuple[HeadPattern, ...], layout: TokenLayout, block_size: int, device: str
) -> tuple[HeadGroup, ...]:
    groups = []
    for order in ORDERS:
        heads = tuple(h for h, p in enumerate(patterns) if p.kind != "skip" and p.order() == order)
        if not heads:
            continue
        dense = torch.stack([pattern_block_mask(patterns[h], layout, block_size) for h in heads])
        mask = BlockMask.from_dense(dense[None].to(device), block_size)
        groups.append(HeadGroup(order, heads, torch.tensor(heads, dtype=torch.int64, device=device), mask))
    return tuple(groups)


def head_block_mask(
    patterns: Sequence[HeadPattern],
    layout: TokenLayout,
    block_size: int = 128,
    *,
    device: torch.device | str | None = None,
) -> dict[str, HeadGroup]:
    """Group heads by token order: ``{"natural": HeadGroup, "position": HeadGroup}``, only orders some head uses.

    Skip heads are in no group; full heads are in ``"natural"``. Groups are cached by ``(patterns, layout,
    block_size, device)``, so repeated calls hand back the same :class:`BlockMask` objects.
    """
    dev = str(torch.device(device)) if device is not None else "cpu"
    return {g.order: g for g in _head_groups(tuple(patterns), layout, int(block_size), dev)}


def sparse_vdit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: TokenLayout,
    patterns: Sequence[HeadPattern],
    *,
    block_size: int = 128,
    scale: float | None = None,
    backend: str = "auto",
    require_keys: bool = False,
) -> torch.Tensor:
    """Self-attention with one Sparse-vDiT pattern per head.

    q/k/v ``[B, S, H, D]`` with ``S == layout.num_tokens`` and ``len(patterns) == H``. Returns ``[B, S, H, D]`` in
    q's dtype: skip heads are zeros, the others run in one :func:`block_sparse_attention` launch per token order
    (the ``"position"`` group on position-major permuted tokens, inverted on the output). Skip heads never enter
    a launch, so ``require_keys`` (see :func:`block_sparse_attention`) holds the other heads to the invariant.
    """
    if q.dim() != 4:
        raise ValueError(f"q, k, v must be [B, S, H, D], got q of shape {tuple(q.shape)}")
    B, S, H, D = q.shape
    if len(patterns) != H:
        raise ValueError(f"sparse_vdit_attention got {len(patterns)} head patterns for {H} heads")
    if S != layout.num_tokens or k.shape[1] != S:
        raise ValueError(f"q/k have {S}/{k.shape[1]} tokens but the layout has {layout.num_tokens}")
    groups = head_block_mask(patterns, layout, block_size, device=q.device)
    covers_all = len(groups) == 1 and len(next(iter(groups.values())).heads) == H
    out = None if covers_all else q.new_zeros(B, S, H, D)
    for g in groups.values():
        if covers_all:
            qg, kg, vg = q, k, v
        else:
            qg, kg, vg = (t.index_select(2, g.head_index) for t in (q, k, v))
        if g.order == "position":
            perm = position_major_permutation(layout)
            qg, kg, vg = (perm.apply(t, dim=1) for t in (qg, kg, vg))
        og = block_sparse_attention(qg, kg, vg, g.mask, scale=scale, backend=backend, require_keys=require_keys)
        if g.order == "position":
            og = perm.invert(og, dim=1)
        if covers_all:
            return og
        out.index_copy_(2, g.head_index, og)
    return out
