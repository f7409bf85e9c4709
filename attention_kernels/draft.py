"""DraftAttention's kernel-level pieces (arXiv 2505.14708; reference/sparse-attention-methods.md section 2).

1. :func:`draft_permutation` reorders the tokens so that every ``rows x cols`` spatial patch of a frame is one
   contiguous block of ``block_size = rows * cols`` slots. Frames whose grid does not divide into patches are
   padded (padding slots hold no token); text tokens keep their side and get whole blocks of their own.
2. :func:`block_mean_pool` averages q and k over the valid tokens of each block (after the reorder a block is one
   pooling window): the "draft" q and k, one token per block.
3. :func:`draft_block_mask` forms, per (batch, head), the low-resolution map ``softmax(q̄ k̄ᵀ * scale)`` over the
   video blocks and keeps the top ``1 - sparsity`` fraction of all its entries (plus the diagonal, so no row is
   empty); rows and columns of text blocks stay dense.
4. :func:`draft_attention` runs the whole thing: permute, build the mask, block-sparse attention, un-permute.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .api import block_sparse_attention
from .block_mask import BlockMask
from .layout import TokenLayout
from .permute import TokenPermutation

POOL_BACKENDS = ("auto", "torch", "triton")


# ------------------------------------------------------------------------------------------------------------
# Token reorder
# ------------------------------------------------------------------------------------------------------------
def _check_patch(block_size: int, patch: tuple[int, int]) -> tuple[int, int]:
    rows, cols = (int(p) for p in patch)
    if rows < 1 or cols < 1:
        raise ValueError(f"patch (rows, cols) must be positive, got {patch}")
    if rows * cols != block_size:
        raise ValueError(
            f"patch {rows}x{cols} holds {rows * cols} tokens but block_size is {block_size}: "
            "rows * cols must equal block_size (each patch is one block)"
        )
    return rows, cols


@dataclass(frozen=True)
class DraftBlockRoles:
    """Which blocks of the permuted sequence hold text and which hold video patches.

    Both regions are contiguous runs of blocks: video blocks ``video_blocks`` (``num_video_blocks`` of them, in
    (frame, patch row, patch col) order, ``patch_grid = (frames, patch rows, patch cols)``) and text blocks
    ``text_blocks`` (empty when the layout has no text). ``num_slots = num_blocks * block_size``.
    """

    num_blocks: int
    block_size: int
    video_start: int
    num_video_blocks: int
    text_start: int
    num_text_blocks: int
    patch_grid: tuple[int, int, int]

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def video_blocks(self) -> slice:
        return slice(self.video_start, self.video_start + self.num_video_blocks)

    @property
    def text_blocks(self) -> slice:
        return slice(self.text_start, self.text_start + self.num_text_blocks)

    @property
    def video_slots(self) -> slice:
        return slice(self.video_start * self.block_size, (self.video_start + self.num_video_blocks) * self.block_size)

    def is_text(self) -> torch.Tensor:
        """bool ``[num_blocks]``: True on text blocks."""
        flags = torch.zeros(self.num_blocks, dtype=torch.bool)
        flags[self.text_blocks] = True
        return flags


def draft_block_roles(layout: TokenLayout, block_size: int = 128, patch: tuple[int, int] = (8, 16)) -> DraftBlockRoles:
    """Block roles of :func:`draft_permutation`'s sequence for ``layout`` (see :class:`DraftBlockRoles`)."""
    return _draft_block_roles(layout, int(block_size), _check_patch(block_size, patch))


@functools.lru_cache(maxsize=64)
def _draft_block_roles(layout: TokenLayout, block_size: int, patch: tuple[int, int]) -> DraftBlockRoles:
    rows, cols = patch
    grid = (layout.frames, -(-layout.height // rows), -(-layout.width // cols))
    n_video = grid[0] * grid[1] * grid[2]
    n_text = -(-layout.text_len // block_size)
    video_start = n_text if layout.text_pos == "first" else 0
    text_start = 0 if layout.text_pos == "first" else n_video
    return DraftBlockRoles(n_video + n_text, block_size, video_start, n_video, text_start, n_text, grid)


def draft_permutation(layout: TokenLayout, block_size: int = 128, patch: tuple[int, int] = (8, 16)) -> TokenPermutation:
    """DraftAttention's patch-major token order, padded so that every ``patch = (rows, cols)`` patch is one block.

    Each frame's ``height x width`` grid is padded up to multiples of ``(rows, cols)``; patches are emitted in
    (frame, patch row, patch col) order, each patch's ``rows x cols`` slots row-major, slots outside the real grid
    being padding. Text tokens keep their side of the sequence (first/last) in their original order, followed by
    padding up to a whole number of blocks. Returns a :class:`TokenPermutation` over ``layout.num_tokens`` tokens
    with ``draft_block_roles(...).num_slots`` slots. Cached by its arguments.
    """
    return _draft_permutation(layout, int(block_size), _check_patch(block_size, patch))


@functools.lru_cache(maxsize=64)
def _draft_permutation(layout: TokenLayout, block_size: int, patch: tuple[int, int]) -> TokenPermutation:
    rows, cols = patch
    roles = _draft_block_roles(layout, block_size, patch)
    f, h, w = layout.frames, layout.height, layout.width
    _, pr, pc = roles.patch_grid
    y = torch.arange(pr * rows).view(pr, rows, 1, 1)  # padded grid row of (patch row, row in patch)
    x = torch.arange(pc * cols).view(1, 1, pc, cols)  # padded grid col of (patch col, col in patch)
    inside = (y < h) & (x < w)
    frame_src = torch.where(inside, y * w + x, -1).permute(0, 2, 1, 3).reshape(-1)  # (patch r, patch c, r, c)
    offsets = (torch.arange(f) * (h * w) + layout.video_start).view(f, 1)
    video = torch.where(frame_src >= 0, frame_src + offsets, -1).reshape(-1)

    parts = [video]
    if layout.text_len:
        ts = layout.text_slice
        text = torch.full((roles.num_text_blocks * block_size,), -1, dtype=torch.int64)
        text[: layout.text_len] = torch.arange(ts.start, ts.stop)
        parts = [text, video] if layout.text_pos == "first" else [video, text]
    return TokenPermutation(torch.cat(parts), layout.num_tokens)


# ------------------------------------------------------------------------------------------------------------
# Block-mean pooling
# ------------------------------------------------------------------------------------------------------------
def _check_pool_inputs(xs: tuple[torch.Tensor, ...], key_valid: torch.Tensor | None, block_size: int) -> None:
    x = xs[0]
    if x.dim() != 4:
        raise ValueError(f"block_mean_pool expects [B, Lp, H, D], got shape {tuple(x.shape)}")
    for other in xs[1:]:
        if other.shape != x.shape or other.dtype != x.dtype or other.device != x.device:
            raise ValueError("block_mean_pool2: q and k must share shape, dtype and device")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"block_mean_pool supports fp16/bf16/fp32, got {x.dtype}")
    if block_size < 1 or x.shape[1] % block_size:
        raise ValueError(f"sequence length {x.shape[1]} is not a multiple of block_size {block_size}")
    if key_valid is not None and (key_valid.dtype != torch.bool or key_valid.shape != (x.shape[1],)):
        raise ValueError(f"key_valid must be bool [Lp={x.shape[1]}], got {key_valid.dtype} {tuple(key_valid.shape)}")


def _resolve_pool_backend(backend: str, device: torch.device) -> str:
    if backend not in POOL_BACKENDS:
        raise ValueError(f"unknown pool backend {backend!r}; choose one of {POOL_BACKENDS}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if backend == "triton" and device.type != "cuda":
        from .api import triton_interpreting

        if not triton_interpreting():
            raise ValueError("pool backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1); use 'torch'")
    return backend


def _torch_pool(x: torch.Tensor, key_valid: torch.Tensor | None, block_size: int) -> torch.Tensor:
    B, Lp, H, D = x.shape
    nb = Lp // block_size
    xb = x.float().view(B, nb, block_size, H, D)
    if key_valid is None:
        return xb.mean(2).permute(0, 2, 1, 3)
    valid = key_valid.to(x.device).view(nb, block_size)
    total = xb.masked_fill(~valid[None, :, :, None, None], 0.0).sum(2)  # [B, NB, H, D]
    count = valid.sum(1).clamp(min=1).to(torch.float32)
    return (total / count[None, :, None, None]).permute(0, 2, 1, 3)


def block_mean_pool(
    x: torch.Tensor, key_valid: torch.Tensor | None, block_size: int, *, backend: str = "auto"
) -> torch.Tensor:
    """Mean of each ``block_size``-token block over its valid tokens.

    x ``[B, Lp, H, D]`` fp16/bf16/fp32 with ``Lp`` a multiple of ``block_size``; ``key_valid`` bool ``[Lp]``
    (None: all valid). Returns fp32 ``[B, H, Lp // block_size, D]``; a block with no valid token gives zeros.
    ``backend``: ``"torch"``, ``"triton"`` (fused kernel, CUDA or ``TRITON_INTERPRET=1``), ``"auto"`` (triton on
    CUDA, torch elsewhere).
    """
    _check_pool_inputs((x,), key_valid, block_size)
    if _resolve_pool_backend(backend, x.device) == "torch":
        return _torch_pool(x, key_valid, block_size)
    from .draft_triton import triton_block_mean_pool

    return triton_block_mean_pool((x,), key_valid, block_size)[0]


def block_mean_pool2(
    q: torch.Tensor, k: torch.Tensor, key_valid: torch.Tensor | None, block_size: int, *, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`block_mean_pool` of q and k (same shape/dtype/device); the triton backend pools both in one launch."""
    _check_pool_inputs((q, k), key_valid, block_size)
    if _resolve_pool_backend(backend, q.device) == "torch":
        return _torch_pool(q, key_valid, block_size), _torch_pool(k, key_valid, block_size)
    from .draft_triton import triton_block_mean_pool

    out = triton_block_mean_pool((q, k), key_valid, block_size)
    return out[0], out[1]


# ------------------------------------------------------------------------------------------------------------
# Draft mask
# ------------------------------------------------------------------------------------------------------------
def draft_keep_count(num_video_blocks: int, sparsity: float) -> int:
    """Entries kept of an ``S x S`` draft map: ``max(1, ceil((1 - sparsity) * S²))``.

    The product is rounded to 9 decimals before the ceiling so float noise (``(1 - 0.7) * 100 = 30.000000000000004``)
    does not keep an extra entry.
    """
    total = num_video_blocks * num_video_blocks
    return min(total, max(1, math.ceil(round((1.0 - sparsity) * total, 9))))


class DraftBlockMask(BlockMask):
    """:func:`draft_block_mask`'s result: a :class:`BlockMask` whose summary costs no host sync before a launch.

    ``BlockMask`` reduces its density and empty query blocks together, with one device-to-host copy that the
    kernel entry point's ``require_keys`` check would wait for right before every Draft launch. Here neither
    waits for the launch:

    - ``empty_query_blocks`` is 0 by construction: every query block keeps its own (diagonal) block, which holds
      a real key whenever the block holds a real token (the mask is square over one permuted sequence), and text
      rows keep every block. ``tests/kernels/test_draft.py`` checks it against the reduction.
    - the kept-block count (which depends on how many top-k entries fall on the diagonal) is reduced on the
      device when the mask is built and copied to pinned host memory without blocking; ``density`` waits for that
      copy only, which the stream runs before the attention kernel launched after the mask, not for the kernel.
    """

    def __init__(self, kv_num_blocks, kv_indices, block_size, key_valid=None):
        super().__init__(kv_num_blocks, kv_indices, block_size, key_valid)
        kept = self.kv_num_blocks.sum(dtype=torch.int64)
        self._kept_event = None
        if kept.is_cuda:
            host = torch.empty((), dtype=torch.int64, pin_memory=True)
            host.copy_(kept, non_blocking=True)
            self._kept_event = torch.cuda.Event()
            self._kept_event.record(torch.cuda.current_stream(kept.device))
            kept = host
        self._kept = kept

    @functools.cached_property
    def _summary(self) -> tuple[float, int]:
        if self._kept_event is not None:
            self._kept_event.synchronize()
        total = self.kv_num_blocks.numel() * self.num_k_blocks
        return int(self._kept) / max(total, 1), 0

    @property
    def empty_query_blocks(self) -> int:
        return 0


def _check_sparsity(sparsity: float) -> float:
    sparsity = float(sparsity)
    if not (0.0 <= sparsity < 1.0):
        raise ValueError(f"sparsity must be in [0, 1) (the fraction of video block pairs dropped), got {sparsity}")
    return sparsity


def draft_block_mask(
    q_perm: torch.Tensor,
    k_perm: torch.Tensor,
    layout: TokenLayout,
    sparsity: float,
    *,
    block_size: int = 128,
    patch: tuple[int, int] = (8, 16),
    scale: float | None = None,
    pool_backend: str = "auto",
) -> BlockMask:
    """DraftAttention's per-(batch, head) block mask from q/k already reordered by :func:`draft_permutation`.

    q_perm, k_perm ``[B, Lp, H, D]``. The draft map ``softmax(q̄ k̄ᵀ * scale)`` (``[B, H, S, S]`` over the ``S``
    video blocks, ``scale`` default ``D**-0.5``) keeps its ``draft_keep_count(S, sparsity)`` largest entries per
    (batch, head) (``torch.topk`` over all ``S²``), plus the diagonal. Every row and column involving a text block
    is kept. Returns a :class:`DraftBlockMask` ``[B, H, NB, NB]`` with ``key_valid`` marking the padding slots (None
    when the permutation has no padding); its density and empty-query-block count need no host sync before a
    kernel launch.
    """
    sparsity = _check_sparsity(sparsity)
    perm = draft_permutation(layout, block_size, patch)
    roles = draft_block_roles(layout, block_size, patch)
    if q_perm.shape != k_perm.shape or q_perm.dim() != 4 or q_perm.shape[1] != perm.num_slots:
        raise ValueError(
            f"draft_block_mask expects q_perm and k_perm [B, {perm.num_slots}, H, D] (permuted by draft_permutation), "
            f"got {tuple(q_perm.shape)} and {tuple(k_perm.shape)}"
        )
    B, _, H, D = q_perm.shape
    device = q_perm.device
    # Without padding slots there is nothing to mask: None keeps the backends off their key-masking path.
    key_valid = perm.to(device).key_valid if perm.num_slots != perm.num_tokens else None
    vs = roles.video_slots
    pool_valid = None if key_valid is None else key_valid[vs]
    q_bar, k_bar = block_mean_pool2(q_perm[:, vs], k_perm[:, vs], pool_valid, block_size, backend=pool_backend)
    scale = D**-0.5 if scale is None else float(scale)
    draft = torch.softmax(torch.matmul(q_bar, k_bar.transpose(-1, -2)) * scale, dim=-1)  # [B, H, S, S] fp32

    S = roles.num_video_blocks
    top = torch.topk(draft.view(B, H, S * S), draft_keep_count(S, sparsity), dim=-1, sorted=False).indices
    keep = torch.zeros(B, H, S * S, dtype=torch.bool, device=device).scatter_(-1, top, True).view(B, H, S, S)
    keep |= torch.eye(S, dtype=torch.bool, device=device)

    dense = torch.ones(B, H, roles.num_blocks, roles.num_blocks, dtype=torch.bool, device=device)
    dense[:, :, roles.video_blocks, roles.video_blocks] = keep
    return DraftBlockMask.from_dense(dense, block_size, key_valid=key_valid)


def draft_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: TokenLayout,
    sparsity: float,
    *,
    block_size: int = 128,
    patch: tuple[int, int] = (8, 16),
    scale: float | None = None,
    backend: str = "auto",
    pool_backend: str = "auto",
    return_mask: bool = False,
    require_keys: bool = False,
):
    """DraftAttention self-attention in the original token order.

    q/k/v ``[B, S, H, D]`` with ``S = layout.num_tokens``. Reorders with :func:`draft_permutation`, builds
    :func:`draft_block_mask`, runs :func:`block_sparse_attention` (``backend``) on the reordered tensors and
    restores the order. Returns ``out [B, S, H, D]`` (and the :class:`BlockMask` over the permuted sequence
    when ``return_mask``). ``require_keys`` as in :func:`block_sparse_attention`.
    """
    if q.dim() != 4 or q.shape[1] != layout.num_tokens:
        raise ValueError(f"q must be [B, {layout.num_tokens}, H, D] for {layout}, got {tuple(q.shape)}")
    perm = draft_permutation(layout, block_size, patch)
    qp, kp, vp = (perm.apply(t, dim=1) for t in (q, k, v))
    mask = draft_block_mask(
        qp, kp, layout, sparsity, block_size=block_size, patch=patch, scale=scale, pool_backend=pool_backend
    )
    out = perm.invert(
        block_sparse_attention(qp, kp, vp, mask, scale=scale, backend=backend, require_keys=require_keys), dim=1
    )
    return (out, mask) if return_mask else out
