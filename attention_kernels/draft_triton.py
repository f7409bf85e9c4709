"""Fused Triton block-mean pooling for DraftAttention's low-resolution q/k.

``_block_mean_pool_kernel``: one program per (block, batch*head, input). It reads the block's ``block_size``
tokens of one head once, in ``CHUNK``-row tiles, accumulates in fp32 over the valid tokens only and divides by
their count (a block without valid tokens gives zeros). The third grid axis picks one of two inputs, so q and k
are pooled in a single launch without stacking (copying) them.

This module imports triton at import time; :mod:`.draft` imports it lazily (only for the triton pool backend).
Under ``TRITON_INTERPRET=1`` the kernel runs on CPU tensors.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .api import triton_interpreting

POOL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# GPU tile: 32 token rows x padded D per step (32 fp32 accumulator registers per thread at D=128, 4 warps).
GPU_CHUNK, GPU_WARPS = 32, 4


@triton.jit
def _block_mean_pool_kernel(
    X0,
    X1,
    VALID,
    Out,
    stride_x0b,
    stride_x0s,
    stride_x0h,
    stride_x1b,
    stride_x1s,
    stride_x1h,
    stride_ot,
    stride_ob,
    stride_oh,
    stride_on,
    H,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    CHUNK: tl.constexpr,
    HAS_VALID: tl.constexpr,
):
    """x0/x1 ``[B, Lp, H, D]`` (unit stride on D), valid uint8 ``[Lp]`` (None without HAS_VALID), out fp32
    ``[2|1, B, H, NB, D]``.

    Program ``(n, b*H + h, t)`` writes ``out[t, b, h, n] = mean of x_t[b, n*BLOCK_SIZE + i, h]`` over the valid
    rows ``i`` of block ``n``. ``CHUNK`` divides ``BLOCK_SIZE``.
    """
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_t = tl.program_id(2).to(tl.int64)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    start = pid_n.to(tl.int64) * BLOCK_SIZE
    if pid_t == 0:
        base = X0 + off_b * stride_x0b + off_h * stride_x0h + start * stride_x0s
        stride_s = stride_x0s
    else:
        base = X1 + off_b * stride_x1b + off_h * stride_x1h + start * stride_x1s
        stride_s = stride_x1s

    offs_r = tl.arange(0, CHUNK)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    acc = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
    count = tl.zeros([CHUNK], dtype=tl.int32)
    for r0 in range(0, BLOCK_SIZE, CHUNK):
        ptrs = base + (r0 + offs_r)[:, None] * stride_s + offs_d[None, :]
        if HAS_VALID:
            ok = tl.load(VALID + start + r0 + offs_r) != 0
            x = tl.load(ptrs, mask=ok[:, None] & d_ok[None, :], other=0.0)
            count += ok.to(tl.int32)
        else:
            x = tl.load(ptrs, mask=d_ok[None, :], other=0.0)
        acc += x.to(tl.float32)

    total = tl.sum(acc, 0)
    if HAS_VALID:
        n_valid = tl.sum(count, 0)
    else:
        n_valid = BLOCK_SIZE
    mean = total / tl.maximum(n_valid, 1).to(tl.float32)
    out_ptrs = Out + pid_t * stride_ot + off_b * stride_ob + off_h * stride_oh + pid_n * stride_on + offs_d
    tl.store(out_ptrs, mean, mask=d_ok)


def pool_constexprs(head_dim: int, block_size: int, has_valid: bool, interpret: bool | None = None) -> dict:
    """The kernel's constexpr arguments for one call (shared with the AOT test).

    Under the interpreter a block is one chunk (fewer, larger numpy steps); on a GPU 32-row chunks.
    """
    if interpret is None:
        interpret = triton_interpreting()
    return dict(
        HEAD_DIM=head_dim,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_SIZE=block_size,
        CHUNK=block_size if interpret else min(GPU_CHUNK, block_size),
        HAS_VALID=has_valid,
    )


def pool_kernel_args(x0, x1, valid, out) -> list:
    """The kernel's non-constexpr arguments, in order (shared with the AOT test, which passes meta tensors)."""
    return [
        x0,
        x1,
        valid,
        out,
        *x0.stride()[:3],
        *x1.stride()[:3],
        *out.stride()[:4],
        x0.shape[2],
    ]


def triton_block_mean_pool(xs: tuple[torch.Tensor, ...], key_valid: torch.Tensor | None, block_size: int):
    """Pool one or two ``[B, Lp, H, D]`` tensors (same shape, dtype, device) in one launch.

    Returns fp32 ``[len(xs), B, H, Lp // block_size, D]``. Inputs are validated by the caller
    (:func:`.draft.block_mean_pool`); here only D needs unit stride.
    """
    if not 1 <= len(xs) <= 2:
        raise ValueError(f"triton_block_mean_pool pools one or two tensors, got {len(xs)}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"the triton pool needs a power-of-two block_size >= 16, got {block_size}")
    xs = tuple(x if x.stride(-1) == 1 else x.contiguous() for x in xs)
    x0 = xs[0]
    x1 = xs[-1]
    B, Lp, H, D = x0.shape
    nb = Lp // block_size
    out = torch.empty((len(xs), B, H, nb, D), dtype=torch.float32, device=x0.device)
    if out.numel() == 0:
        return out
    has_valid = key_valid is not None
    valid = key_valid.to(x0.device).view(torch.uint8) if has_valid else None
    constexprs = pool_constexprs(D, block_size, has_valid)
    grid = (nb, B * H, len(xs))
    on_device = torch.cuda.device(x0.device) if x0.device.type == "cuda" else contextlib.nullcontext()
    with on_device:
        _block_mean_pool_kernel[grid](*pool_kernel_args(x0, x1, valid, out), **constexprs, num_warps=GPU_WARPS)
    return out
