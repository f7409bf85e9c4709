"""The public block-sparse attention entry point and its backend choice."""

from __future__ import annotations

import os

import torch

from .block_mask import BlockMask

BACKENDS = ("auto", "triton", "flex", "sdpa", "gather", "reference")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Head dims the Triton kernel is built and tested for (padded to a power of two inside the kernel).
TRITON_HEAD_DIMS = (64, 72, 80, 88, 96, 128)


class EmptyQueryBlockError(ValueError):
    """A mask that leaves real queries without any key, passed where every query must attend something."""


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        # The accelerate() methods resolve "auto" from the measured efficiency table first (accel.methods.base.
        # kernel_backend); this is the choice without a table.
        return {"cuda": "triton", "cpu": "sdpa"}.get(device.type, "flex")
    if backend == "gather" and device.type != "cpu":
        raise ValueError("backend='gather' runs on CPU only; use 'triton' or 'flex' on this device")
    if backend == "triton" and device.type != "cuda" and not triton_interpreting():
        raise ValueError(
            "backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter); "
            "use backend='flex' on this device"
        )
    return backend


def _validate(q, k, v, mask, backend):
    if not isinstance(mask, BlockMask):
        raise TypeError(f"mask must be an accel.attention_kernels.BlockMask, got {type(mask).__name__}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be [B, S, H, D] (diffusers' dispatch layout); got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} must share batch, heads and head dim ([B, S, H, D] layout; "
            "grouped-query attention is not supported)"
        )
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one dtype of fp16/bf16/fp32, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError("q, k, v must be on one device")
    if backend == "triton" and q.shape[-1] not in TRITON_HEAD_DIMS:
        raise ValueError(
            f"the triton backend supports head dims {TRITON_HEAD_DIMS}, got {q.shape[-1]}; use backend='flex'"
        )
    mask.check_lengths(q.shape[1], k.shape[1])  # includes key_valid's length ([Sk])
    mask.check_broadcast(q.shape[0], q.shape[2])


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockMask,
    *,
    scale: float | None = None,
    backend: str = "auto",
    return_lse: bool = False,
    require_keys: bool = False,
):
    """Softmax attention restricted to the key blocks ``mask`` keeps.

    q ``[B, Sq, H, D]``, k/v ``[B, Sk, H, D]`` (fp16, bf16 or fp32), ``mask`` a :class:`BlockMask` with
    ``ceil(Sq/bs) x ceil(Sk/bs)`` blocks, broadcast over batch and heads where its dims are 1.
    Returns ``out [B, Sq, H, D]`` in q's dtype, and with ``return_lse`` also the natural-log
    ``lse [B, H, Sq]`` fp32. Keys marked padding by ``mask.key_valid`` (bool ``[Sk]``) are never attended, even in
    kept blocks. A query row with no valid key in its kept blocks (or no kept block) gives zeros and LSE ``-inf``.

    Backends: ``"triton"`` (fused kernel, CUDA or ``TRITON_INTERPRET=1``), ``"flex"`` (torch FlexAttention,
    compiled), ``"sdpa"`` (any device: the device's own fused attention over contiguous runs of kept blocks, merged
    by LSE; see :mod:`.sdpa_runs`; it also serves ``return_lse`` for flex on CPU), ``"gather"`` (CPU: torch's fused
    CPU flash kernel over each query block's gathered key blocks), ``"reference"`` (dense fp32, the oracle),
    ``"auto"`` (triton on CUDA, sdpa on CPU, flex elsewhere).

    ``require_keys=True`` (the attention methods' setting) refuses a mask in which a query block holding a real
    token keeps no block with a real key: it raises :class:`EmptyQueryBlockError` instead of returning zeros for
    those queries. The check is computed once per mask object.
    """
    backend = resolve_backend(backend, q.device)
    _validate(q, k, v, mask, backend)
    if require_keys and mask.empty_query_blocks:
        raise EmptyQueryBlockError(
            f"{mask} leaves {mask.empty_query_blocks} query block(s) with real tokens and no key block: their "
            "output would be zeros. This is a bug in the mask builder; please report it with the layout"
        )
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    mask = mask.to(q.device)  # moves key_valid too
    if backend == "reference":
        from .naive import reference_attention

        out, lse = reference_attention(q, k, v, mask, scale)
    elif backend == "sdpa":
        from .sdpa_runs import sdpa_block_sparse

        out, lse = sdpa_block_sparse(q, k, v, mask, scale)
    elif backend == "gather":
        from .cpu_gather import gather_block_sparse

        out, lse = gather_block_sparse(q, k, v, mask, scale)
    elif backend == "flex":
        from .flex import flex_block_sparse

        res = flex_block_sparse(q, k, v, mask, scale, return_lse)
        out, lse = res if return_lse else (res, None)
    else:
        from .triton_block_sparse import triton_block_sparse

        out, lse = triton_block_sparse(q, k, v, mask, scale)
    return (out, lse) if return_lse else out
