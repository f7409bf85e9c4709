"""Block-sparse attention masks in the FlexAttention / BSR index layout."""

from __future__ import annotations

import functools
import math

import torch


class BlockMask:
    """Which key blocks each query block attends to.

    Stored per query block as a count and a list of kept key-block indices (the layout of FlexAttention's
    ``kv_num_blocks`` / ``kv_indices`` and of BSR ``indptr`` / ``indices``):

    - ``kv_num_blocks``: int32 ``[B|1, H|1, QB]``
    - ``kv_indices``: int32 ``[B|1, H|1, QB, KB]``; the first ``kv_num_blocks`` entries of each row are the kept
      key blocks in ascending order, the rest are padding (0).

    A size-1 batch or head dimension broadcasts over the attention call. ``QB = ceil(Sq / block_size)`` and
    ``KB = ceil(Sk / block_size)``: the last block of a sequence may be partial, the kernels mask its tail.

    ``key_valid`` (optional, bool ``[Sk]``, shared by every batch element, head and query) marks keys that exist;
    ``False`` keys are padding (a token permutation that pads frames to whole blocks) and are never attended, even
    inside kept blocks. ``None`` means every key is real.
    """

    def __init__(
        self,
        kv_num_blocks: torch.Tensor,
        kv_indices: torch.Tensor,
        block_size: int,
        key_valid: torch.Tensor | None = None,
    ):
        if kv_num_blocks.dim() != 3 or kv_indices.dim() != 4:
            raise ValueError(
                "BlockMask expects kv_num_blocks [B, H, QB] and kv_indices [B, H, QB, KB], got "
                f"{tuple(kv_num_blocks.shape)} and {tuple(kv_indices.shape)}"
            )
        if kv_indices.shape[:3] != kv_num_blocks.shape:
            raise ValueError("kv_indices and kv_num_blocks disagree on [B, H, QB]")
        if block_size < 16 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")
        self.kv_num_blocks = kv_num_blocks.to(torch.int32).contiguous()
        self.kv_indices = kv_indices.to(torch.int32).contiguous()
        self.block_size = int(block_size)
        if key_valid is not None:
            if key_valid.dtype != torch.bool or key_valid.dim() != 1:
                raise ValueError(
                    f"key_valid must be a 1-D bool tensor [Sk], got {key_valid.dtype} {tuple(key_valid.shape)}"
                )
            if math.ceil(key_valid.numel() / self.block_size) != self.num_k_blocks:
                raise ValueError(
                    f"key_valid has {key_valid.numel()} keys, which does not fit {self.num_k_blocks} key blocks of "
                    f"{self.block_size}"
                )
            key_valid = key_valid.to(self.kv_indices.device).contiguous()
        self.key_valid = key_valid

    # ----------------------------------------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, mask: torch.Tensor, block_size: int, key_valid: torch.Tensor | None = None) -> BlockMask:
        """Build from a boolean block mask ``[B|1, H|1, QB, KB]`` (also accepts ``[QB, KB]``)."""
        if mask.dtype != torch.bool:
            raise TypeError(f"BlockMask.from_dense needs a bool tensor, got {mask.dtype}")
        if mask.dim() == 2:
            mask = mask[None, None]
        if mask.dim() != 4:
            raise ValueError(f"expected a [B, H, QB, KB] block mask, got shape {tuple(mask.shape)}")
        counts = mask.sum(-1, dtype=torch.int32)
        # A stable descending sort puts kept blocks first, in ascending index order.
        order = torch.sort(mask.to(torch.uint8), dim=-1, descending=True, stable=True).indices
        kb = torch.arange(mask.shape[-1], device=mask.device)
        indices = torch.where(kb < counts[..., None], order, torch.zeros_like(order))
        return cls(counts, indices, block_size, key_valid)

    @classmethod
    def full(cls, q_blocks: int, k_blocks: int, block_size: int, device=None) -> BlockMask:
        return cls.from_dense(torch.ones(1, 1, q_blocks, k_blocks, dtype=torch.bool, device=device), block_size)

    def to_dense(self) -> torch.Tensor:
        """Boolean block mask ``[B|1, H|1, QB, KB]``."""
        kb = self.kv_indices.shape[-1]
        valid = torch.arange(kb, device=self.kv_indices.device) < self.kv_num_blocks[..., None]
        dense = torch.zeros(*self.kv_indices.shape[:3], kb, dtype=torch.bool, device=self.kv_indices.device)
        dense.scatter_(-1, self.kv_indices.long(), valid)
        # Padding entries point at block 0 with valid=False; a kept block 0 is scattered as True. scatter_ with
        # duplicate indices is order-dependent, so OR in the kept block-0 entries explicitly.
        dense[..., 0] |= ((self.kv_indices == 0) & valid).any(-1)
        return dense

    def token_mask(self, q_len: int, k_len: int) -> torch.Tensor:
        """Boolean token mask ``[B|1, H|1, Sq, Sk]`` (the expansion the reference backend uses)."""
        self.check_lengths(q_len, k_len)
        bs = self.block_size
        dense = self.to_dense()
        tok = dense.repeat_interleave(bs, dim=-2)[..., :q_len, :].repeat_interleave(bs, dim=-1)[..., :k_len]
        if self.key_valid is not None:
            tok = tok & self.key_valid[:k_len]
        return tok

    def with_key_valid(self, key_valid: torch.Tensor | None) -> BlockMask:
        """The same kept blocks with padding keys marked (see the class docstring)."""
        return BlockMask(self.kv_num_blocks, self.kv_indices, self.block_size, key_valid)

    # ----------------------------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.kv_indices.shape)  # type: ignore[return-value]

    @property
    def num_q_blocks(self) -> int:
        return self.kv_indices.shape[2]

    @property
    def num_k_blocks(self) -> int:
        return self.kv_indices.shape[3]

    @functools.cached_property
    def _summary(self) -> tuple[float, int]:
        """(density, empty query blocks), reduced together: one host sync per mask, on first use."""
        kb, bs = self.num_k_blocks, self.block_size
        if self.key_valid is None:
            row_has_key = self.kv_num_blocks > 0
            row_has_query = torch.ones(self.num_q_blocks, dtype=torch.bool, device=self.device)
        else:
            pad = kb * bs - self.key_valid.numel()
            block_has_key = torch.nn.functional.pad(self.key_valid, (0, pad)).view(kb, bs).any(1)
            listed = torch.arange(kb, device=self.device) < self.kv_num_blocks[..., None]
            row_has_key = (block_has_key[self.kv_indices] & listed).any(-1)  # [B, H, QB]
            # A square mask with padding is self-attention over one permuted sequence: padding slots are queries
            # too, and a query block of padding alone needs no key.
            square = self.num_q_blocks == kb
            row_has_query = block_has_key if square else torch.ones_like(row_has_key[0, 0])
        empty = (~row_has_key & row_has_query).sum()
        kept, n_empty = torch.stack([self.kv_num_blocks.sum().to(torch.int64), empty]).tolist()
        total = self.kv_num_blocks.numel() * kb
        return kept / max(total, 1), int(n_empty)

    @property
    def density(self) -> float:
        """Fraction of (query block, key block) pairs kept, averaged over the stored batch and heads.

        Computed once per mask (masks are not modified after construction): planners read it on every attention
        call, and on CUDA the reduction would cost a device sync each time.
        """
        return self._summary[0]

    @property
    def empty_query_blocks(self) -> int:
        """Query blocks (over the stored batch and heads) that hold a real token but keep no block with a real key.

        Their queries would get zero output. The attention methods require 0 (``block_sparse_attention(...,
        require_keys=True)``); a head that a method skips on purpose is left out of the launch instead.
        """
        return self._summary[1]

    @functools.cached_property
    def padded_keys(self) -> int:
        """Number of padding keys (``key_valid`` False)."""
        return 0 if self.key_valid is None else int((~self.key_valid).sum().item())

    @property
    def device(self) -> torch.device:
        return self.kv_indices.device

    def to(self, device) -> BlockMask:
        if torch.device(device) == self.device:
            return self
        kv = None if self.key_valid is None else self.key_valid.to(device)
        return BlockMask(self.kv_num_blocks.to(device), self.kv_indices.to(device), self.block_size, kv)

    def check_lengths(self, q_len: int, k_len: int) -> None:
        bs = self.block_size
        if math.ceil(q_len / bs) != self.num_q_blocks or math.ceil(k_len / bs) != self.num_k_blocks:
            raise ValueError(
                f"BlockMask has {self.num_q_blocks}x{self.num_k_blocks} blocks of {bs} tokens, which does not fit "
                f"query length {q_len} and key length {k_len} (need ceil(S/{bs}) blocks per side)"
            )
        if self.key_valid is not None and self.key_valid.numel() != k_len:
            raise ValueError(f"BlockMask.key_valid has {self.key_valid.numel()} entries for key length {k_len}")

    def check_broadcast(self, batch: int, heads: int) -> None:
        b, h = self.kv_indices.shape[:2]
        if b not in (1, batch) or h not in (1, heads):
            raise ValueError(
                f"BlockMask batch/head dims {(b, h)} do not broadcast to batch={batch}, heads={heads}; "
                "use size 1 to share a mask"
            )

    def __repr__(self) -> str:
        return (
            f"BlockMask(shape={self.shape}, block_size={self.block_size}, density={self.density:.3f}, "
            f"padded_keys={self.padded_keys}, device={self.device})"
        )


@functools.lru_cache(maxsize=128)
def cached_block_mask(dense: torch.Tensor, block_size: int, device: str) -> BlockMask:
    """``BlockMask.from_dense(dense[None, None])`` on ``device``, cached for the static mask builders: their
    ``[QB, KB]`` tensors come from caches themselves, so one layout hands over the same tensor object (tensors hash
    by identity) and gets one BlockMask per device."""
    return BlockMask.from_dense(dense.to(device)[None, None], block_size)


def device_key(device) -> str:
    """Cache key of an optional device argument (None: CPU)."""
    return str(torch.device(device)) if device is not None else "cpu"
