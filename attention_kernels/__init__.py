"""Block-sparse attention kernels, masks and token layouts (imports only torch; triton loads lazily)."""

from .api import block_sparse_attention, resolve_backend
from .block_mask import BlockMask
from .layout import TokenLayout
from .merge import merge_attention
from .radial import radial_mask

__all__ = [
    "BlockMask",
    "TokenLayout",
    "block_sparse_attention",
    "merge_attention",
    "radial_mask",
    "resolve_backend",
]
