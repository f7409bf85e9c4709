"""Token permutations (with padding) applied to q/k/v before block-sparse attention and inverted on the output.

A :class:`TokenPermutation` maps the ``L`` tokens of a sequence onto ``Lp >= L`` slots. Slot ``i`` holds original
token ``src[i]``, or is padding when ``src[i] == -1``. Padding lets a permutation give every spatial patch a whole
kernel block when a frame does not divide into patches; padded slots are zeros in q/k/v and must be masked as keys
(``BlockMask.key_valid``; :meth:`TokenPermutation.key_valid` gives it), and their output rows are dropped by
:meth:`TokenPermutation.invert`.
"""

from __future__ import annotations

import functools

import torch


class TokenPermutation:
    """``src`` int64 ``[Lp]``: the original token index of each slot, -1 for padding. Every token appears once."""

    def __init__(self, src: torch.Tensor, num_tokens: int):
        src = src.to(torch.int64).contiguous()
        if src.dim() != 1:
            raise ValueError(f"TokenPermutation src must be 1-D, got shape {tuple(src.shape)}")
        real = src[src >= 0]
        if real.numel() != num_tokens or not torch.equal(
            torch.sort(real).values, torch.arange(num_tokens, device=src.device)
        ):
            raise ValueError(f"TokenPermutation src must list each of the {num_tokens} tokens exactly once")
        self.src = src
        self.num_tokens = int(num_tokens)

    @property
    def num_slots(self) -> int:
        return self.src.numel()

    @functools.cached_property
    def slots(self) -> torch.Tensor:
        """int64 ``[L]``: the slot of each original token (the inverse permutation)."""
        inv = torch.empty(self.num_tokens, dtype=torch.int64, device=self.src.device)
        filled = torch.nonzero(self.src >= 0).squeeze(1)
        inv[self.src[filled]] = filled
        return inv

    @functools.cached_property
    def key_valid(self) -> torch.Tensor:
        """bool ``[Lp]``: True on slots holding a real token."""
        return self.src >= 0

    @functools.cached_property
    def is_identity(self) -> bool:
        return self.num_slots == self.num_tokens and bool(
            torch.equal(self.src, torch.arange(self.num_tokens, device=self.src.device))
        )

    def to(self, device) -> TokenPermutation:
        if torch.device(device) == self.src.device:
            return self
        return _moved(self, str(device))

    def apply(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Reorder ``x`` (``L`` along ``dim``) into the ``Lp`` slots; padding slots are zeros."""
        if x.shape[dim] != self.num_tokens:
            raise ValueError(f"permutation over {self.num_tokens} tokens applied to a length-{x.shape[dim]} axis")
        perm = self.to(x.device)
        if perm.num_slots == perm.num_tokens:
            return x.index_select(dim, perm.src)
        pad_shape = list(x.shape)
        pad_shape[dim] = 1
        padded = torch.cat([x, x.new_zeros(pad_shape)], dim)  # index L is a zero row
        return padded.index_select(dim, torch.where(perm.src >= 0, perm.src, perm.num_tokens))

    def invert(self, y: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Back from slots to the original order (``Lp`` along ``dim`` -> ``L``); padding rows are dropped."""
        if y.shape[dim] != self.num_slots:
            raise ValueError(f"permutation with {self.num_slots} slots inverted on a length-{y.shape[dim]} axis")
        return y.index_select(dim, self.to(y.device).slots)


@functools.lru_cache(maxsize=32)
def _moved(perm: TokenPermutation, device: str) -> TokenPermutation:
    # Permutations hash by identity and come from cached builders: each moves once per device.
    return TokenPermutation(perm.src.to(device), perm.num_tokens)
