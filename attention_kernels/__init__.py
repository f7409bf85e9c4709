"""Block-sparse attention kernels, masks and token layouts (imports only torch; triton loads lazily)."""

from .api import EmptyQueryBlockError, block_sparse_attention, resolve_backend
from .block_mask import BlockMask
from .draft import draft_attention, draft_block_mask, draft_permutation
from .layout import TokenLayout
from .merge import merge_attention
from .permute import TokenPermutation
from .radial import radial_mask
from .rettention import mass_ratio, reshape_sparse, rettention_mask
from .sparse_vdit import HeadPattern, position_major_permutation, sparse_vdit_attention
from .text_split import text_split_attention

__all__ = [
    "BlockMask",
    "EmptyQueryBlockError",
    "HeadPattern",
    "TokenLayout",
    "TokenPermutation",
    "block_sparse_attention",
    "draft_attention",
    "draft_block_mask",
    "draft_permutation",
    "mass_ratio",
    "merge_attention",
    "position_major_permutation",
    "radial_mask",
    "reshape_sparse",
    "resolve_backend",
    "rettention_mask",
    "sparse_vdit_attention",
    "text_split_attention",
]
