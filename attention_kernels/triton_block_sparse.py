"""Fused block-sparse flash-attention forward in Triton.

Three layers:

- ``_bsa_fwd_kernel``: the ``@triton.jit`` kernel. One program per (query tile of ``BLOCK_M`` rows, batch*head).
  It reads its query block's count and kept key-block indices from the :class:`~.block_mask.BlockMask` layout
  and runs an fp32 online softmax (base 2) over the ``BLOCK_N``-key sub-tiles of the kept blocks only.
- the launcher (:func:`pick_config`, :func:`kernel_constexprs`, :func:`_launch`): validation, config table,
  allocation, grid. No autotuning: the config is a pure function of (padded head dim, dtype, mask block size).
- the public op ``torch.ops.accel.block_sparse_attention_fwd`` (a ``torch.library.custom_op`` with a fake
  implementation, so ``torch.compile`` sees one opaque node) and its wrapper :func:`triton_block_sparse`.

This module imports triton at import time; the package imports it lazily (only for ``backend="triton"``), so
``import accel`` never pulls triton in. Under ``TRITON_INTERPRET=1`` the kernel runs on CPU tensors.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .block_mask import BlockMask

LOG2E = 1.4426950408889634
# Head dims are padded to a power of two inside the kernel; these are the paddings the config table covers.
MAX_HEAD_DIM = 128
# What the config table is keyed on, i.e. every kernel variant the launcher picks for production masks.
LAUNCH_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LAUNCH_PADDED_HEAD_DIMS = (64, 128)
LAUNCH_BLOCK_SIZES = (64, 128)


# ------------------------------------------------------------------------------------------------------------
# Kernel
# ------------------------------------------------------------------------------------------------------------
@triton.jit
def _round_to_bf16_grid(x):
    """Round fp32 to the nearest bf16 value (ties to even), staying fp32.

    The interpreter casts fp32 -> bf16 by truncation (the GPU rounds to nearest), which doubles the output's
    rounding error; rounding first makes its truncating cast exact. Finite inputs only (the kernel has no NaN).
    """
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _attend_tile(
    q,
    acc,
    l_i,
    m_i,
    k_base,
    v_base,
    KEY_VALID,
    start_n,
    bias,
    offs_n,
    offs_d,
    d_ok,
    Sk,
    stride_ks,
    stride_vs,
    qk_scale,
    PAD_D: tl.constexpr,
    MASK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    IEEE: tl.constexpr,
    HAS_KEY_VALID: tl.constexpr,
    SCALE_FIRST: tl.constexpr,
):
    """One ``BLOCK_N``-key tile of the online softmax: returns the updated ``(acc, l_i, m_i)``.

    ``MASK_K``: the tile may reach past ``Sk`` (bounds-checked loads, keys past the end masked); otherwise it lies
    wholly inside the keys. ``bias``: 0, or ``+inf`` to make the tile contribute nothing (its loads must still be
    in bounds). Scores stay unscaled until one multiply-add ``s * qk_scale - m`` in the exponent (the row max is
    taken on unscaled scores and scaled once per row, which needs ``qk_scale > 0``). ``SCALE_FIRST``: scale the
    scores first instead (a multiply, then a subtract), for the variants where that keeps ptxas from spilling.
    """
    kt_ptrs = k_base + start_n.to(tl.int64) * stride_ks + (offs_n[None, :] * stride_ks + offs_d[:, None])
    v_ptrs = v_base + start_n.to(tl.int64) * stride_vs + (offs_n[:, None] * stride_vs + offs_d[None, :])
    if MASK_K:
        key_ok = (start_n + offs_n) < Sk
        if PAD_D:
            kt = tl.load(kt_ptrs, mask=d_ok[:, None] & key_ok[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=key_ok[:, None] & d_ok[None, :], other=0.0)
        else:
            kt = tl.load(kt_ptrs, mask=key_ok[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=key_ok[:, None], other=0.0)
    else:
        if PAD_D:
            kt = tl.load(kt_ptrs, mask=d_ok[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
        else:
            kt = tl.load(kt_ptrs)
            v = tl.load(v_ptrs)
    if UPCAST:
        kt = kt.to(tl.float32)
    if IEEE:
        s = tl.dot(q, kt, input_precision="ieee")
    else:
        s = tl.dot(q, kt)
    if SCALE_FIRST:
        s = s * qk_scale
        scale = 1.0
    else:
        scale = qk_scale
    # Masked keys get -inf before the max (and stay -inf when scaled by qk_scale > 0).
    if HAS_KEY_VALID:
        # Padding keys anywhere in the kept blocks; on the tail tile the load's bound (other=0) also drops the keys
        # past Sk.
        if MASK_K:
            kv_ok = tl.load(KEY_VALID + start_n + offs_n, mask=key_ok, other=0) != 0
        else:
            kv_ok = tl.load(KEY_VALID + start_n + offs_n) != 0
        s = tl.where(kv_ok[None, :], s, float("-inf"))
    elif MASK_K:
        s = tl.where(key_ok[None, :], s, float("-inf"))

    m_new = tl.maximum(m_i, tl.max(s, 1) * scale - bias)
    # A row that has seen only masked keys keeps m = -inf; shift by 0 so exp2 gives 0, not NaN.
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s * scale - (m_use + bias)[:, None])  # one multiply-add per score
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if UPCAST:  # interpreter: P@V in fp32 (as PyTorch's CPU attention does)
        v = v.to(tl.float32)
    else:  # GPU: P in the input dtype for the tensor-core P@V (a no-op for fp32)
        p = p.to(v.dtype)
    if IEEE:
        acc = tl.dot(p, v, acc, input_precision="ieee")
    else:
        acc = tl.dot(p, v, acc)
    return acc, l_i, m_new


@triton.jit
def _bsa_fwd_kernel(
    Q,
    K,
    V,
    Out,
    LSE,
    KV_NUM,
    KV_IDX,
    KEY_VALID,
    stride_qb,
    stride_qs,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_ob,
    stride_os,
    stride_oh,
    stride_lb,
    stride_lh,
    stride_nb,
    stride_nh,
    stride_nq,
    stride_ib,
    stride_ih,
    stride_iq,
    H,
    Sq,
    Sk,
    KB,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPARSE_BLOCK: tl.constexpr,
    EVEN_K: tl.constexpr,
    UPCAST: tl.constexpr,
    IEEE: tl.constexpr,
    HAS_KEY_VALID: tl.constexpr,
):
    """q/k/v/o ``[B, S, H, D]`` with unit stride on D; lse ``[B, H, Sq]`` with unit stride on Sq.

    ``qk_scale`` is ``scale * log2(e)``: scores live in base-2 units until the LSE is written.
    ``EVEN_K``: ``Sk % BLOCK_N == 0`` (no key-tail masking). ``UPCAST``: feed fp32 to ``tl.dot`` (interpreter).
    ``IEEE``: exact fp32 dots (fp32 inputs on GPU). ``HAS_KEY_VALID``: ``KEY_VALID`` is a contiguous uint8 ``[Sk]``
    (``BlockMask.key_valid``); keys whose flag is 0 are masked like the key tail (``KEY_VALID`` is ``None``
    otherwise).
    """
    SUB: tl.constexpr = SPARSE_BLOCK // BLOCK_N  # key sub-tiles per sparse block
    PAD_D: tl.constexpr = BLOCK_D != HEAD_DIM

    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // H
    off_h = pid_bh % H
    start_m = pid_m * BLOCK_M
    qb = start_m // SPARSE_BLOCK  # BLOCK_M divides SPARSE_BLOCK: the tile lies in one query block

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = (start_m + offs_m) < Sq
    d_ok = offs_d < HEAD_DIM

    # 64-bit scalar bases; the per-tile offsets below stay small enough for 32 bits.
    b64 = off_b.to(tl.int64)
    h64 = off_h.to(tl.int64)
    q_ptrs = (
        Q
        + b64 * stride_qb
        + h64 * stride_qh
        + start_m.to(tl.int64) * stride_qs
        + (offs_m[:, None] * stride_qs + offs_d[None, :])
    )
    if PAD_D:
        q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    else:
        q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + b64 * stride_kb + h64 * stride_kh
    v_base = V + b64 * stride_vb + h64 * stride_vh

    # This query block's kept key blocks.
    count = tl.load(KV_NUM + off_b * stride_nb + off_h * stride_nh + qb * stride_nq)
    count = tl.minimum(count, KB)
    idx_row = KV_IDX + b64 * stride_ib + h64 * stride_ih + qb * stride_iq
    # Indices are ascending, so sub-tiles wholly past Sk can only sit at the end of the last kept block: trim
    # them from the trip count. Then only the last tile can be ragged (out-of-order lists: see the loop).
    last = tl.load(idx_row + tl.maximum(count - 1, 0), mask=count > 0, other=0)
    last_len = tl.minimum(Sk - last * SPARSE_BLOCK, SPARSE_BLOCK)
    n_iter = tl.where(count > 0, (count - 1) * SUB + (last_len + BLOCK_N - 1) // BLOCK_N, 0)
    # A ragged key tail is masked on the last tile only, peeled off the loop, where the K/V tiles are async copies
    # into shared memory. Where they are staged through registers instead (IEEE fp32, whose dots run on CUDA
    # cores; head dims 72 and 88, whose d-masked loads Triton 3.9 does not turn into async copies), a peeled tile
    # makes ptxas spill (16 to 900 bytes), so those variants keep the bound mask on every loop tile, and the half
    # ones (at 255 registers) scale the scores before the max as before: the multiply-add form spills 16 bytes.
    REG_STAGED: tl.constexpr = IEEE or (HEAD_DIM % 16 != 0)
    PEEL: tl.constexpr = (not EVEN_K) and (not REG_STAGED)
    MASK_LOOP: tl.constexpr = (not EVEN_K) and REG_STAGED
    SCALE_FIRST: tl.constexpr = REG_STAGED and (not IEEE)
    if PEEL:
        n_main = tl.maximum(n_iter - 1, 0)
    else:
        n_main = n_iter

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # One flat loop over (kept block, sub-tile) so the pipeliner sees a single innermost loop. The kept-block index
    # is prefetched: loaded for the next iteration at the end of this one and carried, so a tile's K/V addresses
    # are known an iteration ahead and the pipeliner multi-buffers the K/V copies. (Loaded in the iteration that
    # uses it, the index is staged through shared memory and each iteration waits for every outstanding copy:
    # two K/V buffers at most; tests/kernels/test_triton_aot.py checks the buffer count.)
    kb = tl.load(idx_row)  # entry 0 always exists (KB >= 1); unused when count == 0
    saw_ragged = 0
    for it in range(0, n_main):
        start_n = kb * SPARSE_BLOCK + (it % SUB) * BLOCK_N
        if MASK_LOOP:
            bias = 0.0
        else:
            # Unmasked loads must stay inside the keys. With ascending indices no loop tile reaches past Sk; out of
            # order, the last key block's tiles can: such a tile reads block 0 instead and weighs 0 (bias +inf),
            # and the ragged one among them is attended after the loop.
            outside = start_n + BLOCK_N > Sk
            saw_ragged = saw_ragged | outside.to(tl.int32)
            start_n = tl.where(outside, 0, start_n)
            bias = tl.where(outside, float("inf"), 0.0)
        acc, l_i, m_i = _attend_tile(
            q, acc, l_i, m_i, k_base, v_base, KEY_VALID, start_n, bias, offs_n, offs_d, d_ok, Sk,
            stride_ks, stride_vs, qk_scale, PAD_D, MASK_LOOP, UPCAST, IEEE, HAS_KEY_VALID, SCALE_FIRST,
        )  # fmt: skip
        kb = tl.load(idx_row + tl.minimum((it + 1) // SUB, KB - 1))

    if PEEL:
        # The peeled tail: the last tile, and (out-of-order lists only) the ragged tile the loop skipped. A loop of
        # one or two trips, so the masked tile body is emitted once; left to the pipeliner, its K/V copies go
        # through shared memory (reusing the main loop's space) instead of registers: staged through registers
        # (num_stages=1) or single-buffered (num_stages=2), sm_80 ptxas spills the 128x64, D=128 variants.
        tail_start = last * SPARSE_BLOCK + ((n_iter - 1) % SUB) * BLOCK_N
        ragged_start = ((Sk - 1) // BLOCK_N) * BLOCK_N
        n_tail = tl.minimum(n_iter, 1) + saw_ragged
        for t in range(0, n_tail):
            start_n = tl.where(t == 0, tail_start, ragged_start)
            acc, l_i, m_i = _attend_tile(
                q, acc, l_i, m_i, k_base, v_base, KEY_VALID, start_n, 0.0, offs_n, offs_d, d_ok, Sk,
                stride_ks, stride_vs, qk_scale, PAD_D, True, UPCAST, IEEE, HAS_KEY_VALID, SCALE_FIRST,
            )  # fmt: skip

    empty = l_i == 0.0  # no kept key: zeros and LSE -inf
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)

    if UPCAST and Out.dtype.element_ty == tl.bfloat16:
        out = _round_to_bf16_grid(out)
    o_ptrs = (
        Out
        + b64 * stride_ob
        + h64 * stride_oh
        + start_m.to(tl.int64) * stride_os
        + (offs_m[:, None] * stride_os + offs_d[None, :])
    )
    if PAD_D:
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    else:
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    lse_ptrs = LSE + b64 * stride_lb + h64 * stride_lh + start_m + offs_m
    tl.store(lse_ptrs, lse, mask=row_ok)


# ------------------------------------------------------------------------------------------------------------
# Launcher
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def padded_head_dim(head_dim: int) -> int:
    """The power of two the kernel pads D to (at least 16, the smallest ``tl.dot`` K on a GPU)."""
    return max(16, triton.next_power_of_2(head_dim))


# GPU config table: (dtype class, padded head dim row, mask block size row) -> tiles. Chosen for H100 and checked
# for A100 too (tests/kernels/test_triton_aot.py): every entry compiles for sm_80 and sm_90 within shared memory,
# without register spills for any head dim, and with the K/V tiles of the main loop multi-buffered (3 buffers on
# sm_90, 2 on sm_80 for fp16/bf16; the fp32 entries, num_stages 2, are single-buffered).
# 128-row tiles take 8 warps (4 warps hit 255 registers and spill). fp32 runs exact IEEE dots on CUDA cores,
# whose operands live in registers, hence its small tiles (64x64 fp32 tiles spill kilobytes).
_GPU_CONFIGS = {
    ("half", 64, 128): KernelConfig(128, 64, 8, 3),
    ("half", 64, 64): KernelConfig(64, 64, 4, 3),
    ("half", 128, 128): KernelConfig(128, 64, 8, 3),
    ("half", 128, 64): KernelConfig(64, 64, 8, 3),
    ("fp32", 64, 128): KernelConfig(64, 32, 8, 2),
    ("fp32", 64, 64): KernelConfig(64, 32, 8, 2),
    ("fp32", 128, 128): KernelConfig(32, 32, 8, 2),
    ("fp32", 128, 64): KernelConfig(32, 32, 8, 2),
}
_INTERPRETER_CONFIG = KernelConfig(64, 64, 4, 1)


def pick_config(block_d: int, dtype: torch.dtype, block_size: int, interpret: bool | None = None) -> KernelConfig:
    """Tile config for a padded head dim, dtype and mask block size (no autotuning: a fixed table).

    Head dims up to 64 use the D=64 row, larger ones the D=128 row; mask blocks of 128 or more the 128 row,
    smaller ones the 64 row with tiles clamped to the block (the kernel needs BLOCK_M and BLOCK_N to divide the
    mask block) and warps cut to the clamped tile. Under the interpreter: 64x64 tiles (clamped likewise),
    which keeps the numpy work per step large and the step count small.
    """
    if interpret is None:
        interpret = interpreting()
    if interpret:
        cfg = _INTERPRETER_CONFIG
    else:
        kind = "fp32" if dtype == torch.float32 else "half"
        cfg = _GPU_CONFIGS[(kind, 64 if block_d <= 64 else 128, 128 if block_size >= 128 else 64)]
    block_m = min(cfg.block_m, block_size)
    block_n = min(cfg.block_n, block_size)
    num_warps = cfg.num_warps
    if (block_m, block_n) != (cfg.block_m, cfg.block_n):
        num_warps = max(1, min(num_warps, block_m // 16))
    return KernelConfig(block_m, block_n, num_warps, cfg.num_stages)


def kernel_constexprs(
    dtype: torch.dtype,
    head_dim: int,
    block_size: int,
    seq_k: int,
    interpret: bool | None = None,
    key_valid: bool = False,
) -> tuple[dict, KernelConfig]:
    """The constexpr arguments and launch config the launcher uses for one call (shared with the AOT test).

    ``key_valid``: whether the call passes a key-valid tensor (``BlockMask.key_valid``); it selects the variant,
    not the tile config.
    """
    if interpret is None:
        interpret = interpreting()
    block_d = padded_head_dim(head_dim)
    cfg = pick_config(block_d, dtype, block_size, interpret)
    constexprs = dict(
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        SPARSE_BLOCK=block_size,
        EVEN_K=seq_k % cfg.block_n == 0,
        # The interpreter's bf16 dots are wrong: it gets fp32 operands (and keeps P in fp32) for half types.
        UPCAST=bool(interpret and dtype != torch.float32),
        IEEE=bool(dtype == torch.float32 and not interpret),
        HAS_KEY_VALID=bool(key_valid),
    )
    return constexprs, cfg


def launch_specializations(head_dims: tuple[int, ...] = LAUNCH_PADDED_HEAD_DIMS) -> list[dict]:
    """Every (dtype, head dim, mask block size, EVEN_K, key-valid) kernel variant the launcher picks on a GPU.

    The config table is keyed on the padded head dim, so the default head dims (64, 128) cover every config;
    pass e.g. ``(72, 80, 88, 96)`` for the D-masked variants (same configs, separate compiles). Each entry:
    ``dtype``, ``head_dim``, ``block_d``, ``block_size``, ``even_k``, ``seq_k`` (a key length giving that
    ``EVEN_K``), ``key_valid`` (whether the call passes ``BlockMask.key_valid``), ``constexprs`` and ``config``.
    """
    specs = []
    for dtype in LAUNCH_DTYPES:
        for head_dim in head_dims:
            for block_size in LAUNCH_BLOCK_SIZES:
                for even_k in (False, True):
                    for key_valid in (False, True):
                        seq_k = 4 * block_size + (0 if even_k else 1)
                        constexprs, cfg = kernel_constexprs(
                            dtype, head_dim, block_size, seq_k, interpret=False, key_valid=key_valid
                        )
                        specs.append(
                            dict(
                                dtype=dtype,
                                head_dim=head_dim,
                                block_d=constexprs["BLOCK_D"],
                                block_size=block_size,
                                even_k=even_k,
                                seq_k=seq_k,
                                key_valid=key_valid,
                                constexprs=constexprs,
                                config=cfg,
                            )
                        )
    return specs


def _check_inputs(q, k, v, kv_num_blocks, kv_indices, block_size: int, key_valid=None) -> None:
    """Shape/dtype/device checks that need no data (so the fake implementation runs them too)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"block_sparse_attention_fwd: q, k, v must be [B, S, H, D]; got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    B, Sq, H, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[2:] != (H, D):
        raise ValueError(
            f"block_sparse_attention_fwd: k {tuple(k.shape)} and v {tuple(v.shape)} must be [B, Sk, H, D] "
            f"matching q {tuple(q.shape)}"
        )
    if q.dtype not in LAUNCH_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(
            f"block_sparse_attention_fwd: q, k, v must share one of fp16/bf16/fp32, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"block_sparse_attention_fwd: head dim must be in [1, {MAX_HEAD_DIM}], got {D}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_sparse_attention_fwd: block_size must be a power of two >= 16, got {block_size}")
    if kv_num_blocks.dim() != 3 or kv_indices.dim() != 4 or kv_indices.shape[:3] != kv_num_blocks.shape:
        raise ValueError(
            "block_sparse_attention_fwd: expected kv_num_blocks [B|1, H|1, QB] and kv_indices [B|1, H|1, QB, KB], "
            f"got {tuple(kv_num_blocks.shape)} and {tuple(kv_indices.shape)}"
        )
    if kv_num_blocks.dtype != torch.int32 or kv_indices.dtype != torch.int32:
        raise TypeError(
            f"block_sparse_attention_fwd: mask tensors must be int32, got {kv_num_blocks.dtype}, {kv_indices.dtype}"
        )
    mb, mh, qblocks, kblocks = kv_indices.shape
    Sk = k.shape[1]
    # Integer ceil-division, so the fake implementation also works with symbolic sizes.
    if qblocks != -(-Sq // block_size) or kblocks != -(-Sk // block_size):
        raise ValueError(
            f"block_sparse_attention_fwd: mask has {qblocks}x{kblocks} blocks of {block_size}, which does not fit "
            f"Sq={Sq}, Sk={Sk}"
        )
    if mb not in (1, B) or mh not in (1, H):
        raise ValueError(
            f"block_sparse_attention_fwd: mask batch/head dims {(mb, mh)} do not broadcast to B={B}, H={H}"
        )
    if B * H > 65535:
        raise ValueError(f"block_sparse_attention_fwd: B*H = {B * H} exceeds the launch grid limit 65535")
    if key_valid is not None and (key_valid.dtype != torch.bool or key_valid.dim() != 1 or key_valid.shape[0] != Sk):
        raise ValueError(
            f"block_sparse_attention_fwd: key_valid must be a bool [Sk={Sk}] tensor, got {key_valid.dtype} "
            f"{tuple(key_valid.shape)}"
        )
    tensors = (q, k, v, kv_num_blocks, kv_indices) + (() if key_valid is None else (key_valid,))
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"block_sparse_attention_fwd: all tensors must be on one device, got {devices}")


def kernel_args(q, k, v, out, lse, kv_num_blocks, kv_indices, scale: float, key_valid=None) -> list:
    """The kernel's non-constexpr arguments, in order (shared with the AOT test, which passes meta tensors).

    ``key_valid``: ``None`` or the contiguous uint8 ``[Sk]`` view of ``BlockMask.key_valid``; ``None`` is passed
    through (Triton specialises it as a constexpr, matching ``HAS_KEY_VALID=False``).
    """

    def bstride(t, dim):  # broadcast mask dims are read with stride 0
        return 0 if t.shape[dim] == 1 else t.stride(dim)

    B, Sq, H, _ = q.shape
    return [
        q,
        k,
        v,
        out,
        lse,
        kv_num_blocks,
        kv_indices,
        key_valid,
        *q.stride()[:3],
        *k.stride()[:3],
        *v.stride()[:3],
        *out.stride()[:3],
        lse.stride(0),
        lse.stride(1),
        bstride(kv_num_blocks, 0),
        bstride(kv_num_blocks, 1),
        kv_num_blocks.stride(2),
        bstride(kv_indices, 0),
        bstride(kv_indices, 1),
        kv_indices.stride(2),
        H,
        Sq,
        k.shape[1],
        kv_indices.shape[3],
        float(scale) * LOG2E,
    ]


def _launch(
    q,
    k,
    v,
    kv_num_blocks,
    kv_indices,
    block_size: int,
    scale: float,
    config: KernelConfig | None = None,
    key_valid: torch.Tensor | None = None,
):
    """Validate, allocate and launch. ``config`` overrides the table (tests use it to run GPU tiles on CPU).

    ``key_valid``: optional bool ``[Sk]``; ``False`` keys are never attended (``BlockMask.key_valid``).
    """
    _check_inputs(q, k, v, kv_num_blocks, kv_indices, block_size, key_valid)
    interpret = interpreting()
    if q.device.type != "cuda" and not interpret:
        raise ValueError(
            "block_sparse_attention_fwd: the Triton kernel needs CUDA tensors, or TRITON_INTERPRET=1 (set before "
            f"triton is imported) to run on {q.device.type}"
        )
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    # Only D needs unit stride (the kernel addresses everything else through strides).
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    if kv_indices.stride(-1) != 1:
        kv_indices = kv_indices.contiguous()
    if key_valid is not None:
        key_valid = key_valid.contiguous().view(torch.uint8)  # bool is one byte: a free reinterpretation

    out = torch.empty((B, Sq, H, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, Sq), dtype=torch.float32, device=q.device)
    if B * H * Sq == 0:
        return out, lse
    if Sk == 0:  # no keys at all: every row is empty
        out.zero_()
        lse.fill_(float("-inf"))
        return out, lse

    # The kernel takes the row max of the unscaled scores and scales it, which needs scale > 0: fold a sign into q
    # (exact), and run scale 0 (uniform weights over the kept keys) as zero scores at scale 1.
    if scale < 0:
        q, scale = -q, -scale
    elif scale == 0:
        q, scale = torch.zeros_like(q), 1.0

    constexprs, cfg = kernel_constexprs(q.dtype, D, block_size, Sk, interpret, key_valid=key_valid is not None)
    if config is not None:
        if block_size % config.block_m or block_size % config.block_n:
            raise ValueError(f"config {config} tiles must divide the mask block size {block_size}")
        cfg = config
        constexprs.update(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, EVEN_K=Sk % cfg.block_n == 0)

    grid = (triton.cdiv(Sq, cfg.block_m), B * H)
    on_device = torch.cuda.device(q.device) if q.device.type == "cuda" else contextlib.nullcontext()
    with on_device:  # Triton launches on the current CUDA device
        _bsa_fwd_kernel[grid](
            *kernel_args(q, k, v, out, lse, kv_num_blocks, kv_indices, scale, key_valid),
            **constexprs,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
    return out, lse


# ------------------------------------------------------------------------------------------------------------
# Public op
# ------------------------------------------------------------------------------------------------------------
def _block_sparse_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    block_size: int,
    scale: float,
    key_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse attention forward: ``(out [B, Sq, H, D] in q.dtype, lse [B, H, Sq] fp32 natural log)``.

    ``key_valid``: optional bool ``[Sk]`` (``BlockMask.key_valid``); ``False`` keys are never attended, and a row
    whose kept keys are all invalid gives zeros and LSE ``-inf``.
    """
    return _launch(q, k, v, kv_num_blocks, kv_indices, block_size, scale, key_valid=key_valid)


def _block_sparse_attention_fwd_fake(q, k, v, kv_num_blocks, kv_indices, block_size, scale, key_valid=None):
    _check_inputs(q, k, v, kv_num_blocks, kv_indices, block_size, key_valid)
    B, Sq, H, D = q.shape
    return q.new_empty((B, Sq, H, D)), q.new_empty((B, H, Sq), dtype=torch.float32)


OP_NAME = "accel::block_sparse_attention_fwd"
# Registered once per process (a second copy of this module, e.g. after importlib.reload, reuses it).
if not hasattr(torch.ops.accel, "block_sparse_attention_fwd"):
    block_sparse_attention_fwd = torch.library.custom_op(OP_NAME, mutates_args=())(_block_sparse_attention_fwd)
    block_sparse_attention_fwd.register_fake(_block_sparse_attention_fwd_fake)


def triton_block_sparse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """q ``[B, Sq, H, D]``, k/v ``[B, Sk, H, D]`` -> ``(out [B, Sq, H, D], lse [B, H, Sq] fp32)``."""
    return torch.ops.accel.block_sparse_attention_fwd(
        q, k, v, mask.kv_num_blocks, mask.kv_indices, mask.block_size, float(scale), mask.key_valid
    )
