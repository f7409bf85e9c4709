"""DraftAttention pieces (attention_kernels/draft.py, draft_triton.py) against brute-force oracles.

- permutation: an explicit loop over (frame, patch row, patch col, row, col) and the text region;
- block-mean pooling: a per-block loop (torch backend), and the Triton kernel (interpreter on CPU) against torch;
- draft mask: pooling, softmax, a sort of all S² entries per head, diagonal and text added by hand (float64);
- draft attention: a token-level mask in the ORIGINAL token order and dense float64 masked softmax attention;
- AOT: the pooling kernel compiles for sm_90 (H100) without spills, in a subprocess with the interpreter off
  (``python -m tests.kernels.test_draft ARCH`` is the compile worker).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from accel.attention_kernels import BlockMask, TokenLayout, block_sparse_attention
from accel.attention_kernels.draft import (
    DraftBlockMask,
    block_mean_pool,
    block_mean_pool2,
    draft_attention,
    draft_block_mask,
    draft_block_roles,
    draft_keep_count,
    draft_permutation,
)

ROOT = Path(__file__).resolve().parents[2]

# (layout, block_size, patch): divisible and non-divisible grids, text none / first / last, text lengths that are
# not a multiple of the block (and one spanning two blocks).
PERM_CASES = [
    (TokenLayout(3, 10, 20), 32, (4, 8)),
    (TokenLayout(3, 10, 20, 5, "first"), 32, (4, 8)),
    (TokenLayout(3, 10, 20, 37, "last"), 32, (4, 8)),
    (TokenLayout(2, 8, 16, 32, "first"), 32, (4, 8)),
    (TokenLayout(2, 8, 16), 32, (2, 16)),
    (TokenLayout(2, 10, 20, 7, "last"), 128, (8, 16)),
    (TokenLayout(1, 9, 17, 130, "first"), 128, (8, 16)),
    (TokenLayout(2, 16, 32), 128, (8, 16)),
]


def _case_id(case) -> str:
    layout, bs, (r, c) = case
    text = f"-{layout.text_pos}{layout.text_len}" if layout.text_len else ""
    return f"{layout.frames}x{layout.height}x{layout.width}{text}-bs{bs}-p{r}x{c}"


# ------------------------------------------------------------------------------------------------------------
# Oracles
# ------------------------------------------------------------------------------------------------------------
def brute_src(layout: TokenLayout, block_size: int, patch: tuple[int, int]) -> list[int]:
    """The permuted sequence's source token per slot (-1: padding), by explicit loops."""
    rows, cols = patch
    h, w = layout.height, layout.width
    vstart = layout.text_len if layout.text_pos == "first" else 0
    video = []
    for f in range(layout.frames):
        for pr in range(math.ceil(h / rows)):
            for pc in range(math.ceil(w / cols)):
                for r in range(rows):
                    for c in range(cols):
                        y, x = pr * rows + r, pc * cols + c
                        video.append(vstart + f * h * w + y * w + x if y < h and x < w else -1)
    if not layout.text_len:
        return video
    tstart = 0 if layout.text_pos == "first" else layout.frames * h * w
    text = list(range(tstart, tstart + layout.text_len))
    text += [-1] * (-len(text) % block_size)
    return text + video if layout.text_pos == "first" else video + text


def brute_block_mask(qp, kp, layout, sparsity, block_size, patch, scale=None) -> torch.Tensor:
    """bool [B, H, NB, NB]: the draft mask from loops in float64 (pool, softmax, sort per head, diag, text)."""
    src = brute_src(layout, block_size, patch)
    nb = len(src) // block_size
    is_text = []
    for n in range(nb):
        real = [s for s in src[n * block_size : (n + 1) * block_size] if s >= 0]
        is_text.append(
            bool(layout.text_len) and any(layout.text_slice.start <= s < layout.text_slice.stop for s in real)
        )
    video = [n for n in range(nb) if not is_text[n]]
    B, _, H, D = qp.shape
    S = len(video)

    def pool(x):
        out = torch.zeros(B, H, S, D, dtype=torch.float64)
        for j, n in enumerate(video):
            slots = [n * block_size + i for i in range(block_size) if src[n * block_size + i] >= 0]
            out[:, :, j] = x[:, slots].double().mean(1)
        return out

    scale = D**-0.5 if scale is None else scale
    draft = torch.softmax(pool(qp) @ pool(kp).transpose(-1, -2) * scale, dim=-1)
    n_keep = max(1, math.ceil((1 - Fraction(str(sparsity))) * S * S))
    dense = torch.ones(B, H, nb, nb, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            values = draft[b, h].flatten().tolist()
            order = sorted(range(S * S), key=lambda e: -values[e])
            keep = torch.zeros(S * S, dtype=torch.bool)
            keep[order[:n_keep]] = True
            keep = keep.view(S, S) | torch.eye(S, dtype=torch.bool)
            for i, qn in enumerate(video):
                for j, kn in enumerate(video):
                    dense[b, h, qn, kn] = keep[i, j]
    return dense


def brute_attention(q, k, v, layout, dense_blocks, block_size, patch, scale=None) -> torch.Tensor:
    """Dense float64 attention in the ORIGINAL order: token i sees token j iff their slots' blocks are kept."""
    src = brute_src(layout, block_size, patch)
    block_of = torch.empty(layout.num_tokens, dtype=torch.long)
    for slot, s in enumerate(src):
        if s >= 0:
            block_of[s] = slot // block_size
    tok = dense_blocks[:, :, block_of][:, :, :, block_of]  # [B, H, S, S]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k, v))
    scores = (qd @ kd.transpose(-1, -2) * scale).masked_fill(~tok, float("-inf"))
    return (torch.softmax(scores, -1) @ vd).transpose(1, 2)


def loop_pool(x, key_valid, block_size) -> torch.Tensor:
    B, Lp, H, D = x.shape
    out = torch.zeros(B, H, Lp // block_size, D, dtype=torch.float64)
    for n in range(Lp // block_size):
        rows = [i for i in range(n * block_size, (n + 1) * block_size) if key_valid is None or key_valid[i]]
        if rows:
            out[:, :, n] = x[:, rows].double().mean(1)
    return out


# ------------------------------------------------------------------------------------------------------------
# Permutation
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", PERM_CASES, ids=_case_id)
def test_permutation_matches_loops(case):
    layout, bs, patch = case
    perm = draft_permutation(layout, bs, patch)
    assert perm.src.tolist() == brute_src(layout, bs, patch)
    assert perm.num_slots % bs == 0
    assert draft_permutation(layout, bs, list(patch)) is perm  # cached (patch normalised to a tuple)

    x = torch.randn(2, layout.num_tokens, 3, 5)
    y = perm.apply(x)
    assert torch.equal(perm.invert(y), x)
    assert torch.all(y[:, ~perm.key_valid] == 0)

    roles = draft_block_roles(layout, bs, patch)
    assert roles.num_slots == perm.num_slots
    blocks = perm.src.view(-1, bs)
    text = layout.text_slice
    for n in range(roles.num_blocks):
        real = blocks[n][blocks[n] >= 0]
        assert real.numel() > 0  # no padding-only block
        in_text = (real >= text.start) & (real < text.stop) if layout.text_len else torch.zeros_like(real, dtype=bool)
        assert bool(in_text.all()) == bool(roles.is_text()[n]) and bool(in_text.any()) == bool(in_text.all())
    # Every video block is exactly one patch: one frame, one (patch row, patch col), in (f, pr, pc) order.
    f_, pr_, pc_ = roles.patch_grid
    rows, cols = patch
    for j, n in enumerate(range(roles.video_blocks.start, roles.video_blocks.stop)):
        t = blocks[n][blocks[n] >= 0] - layout.video_start
        f, y, x = t // layout.tokens_per_frame, (t % layout.tokens_per_frame) // layout.width, t % layout.width
        assert set(f.tolist()) == {j // (pr_ * pc_)}
        assert set((y // rows).tolist()) == {(j // pc_) % pr_} and set((x // cols).tolist()) == {j % pc_}


def test_permutation_rejects_bad_patch():
    with pytest.raises(ValueError, match="rows \\* cols must equal block_size"):
        draft_permutation(TokenLayout(1, 8, 16), 128, (8, 8))
    with pytest.raises(ValueError, match="positive"):
        draft_permutation(TokenLayout(1, 8, 16), 128, (0, 16))


# ------------------------------------------------------------------------------------------------------------
# Block-mean pooling
# ------------------------------------------------------------------------------------------------------------
def _pool_valid(lp: int, bs: int, seed: int = 0) -> torch.Tensor:
    """Random validity with one all-valid block, one all-invalid block and partial blocks elsewhere."""
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(lp, generator=g) < 0.6
    valid[:bs] = True
    valid[bs : 2 * bs] = False
    return valid


@pytest.mark.parametrize("with_valid", [True, False], ids=["valid", "novalid"])
def test_torch_pool_matches_loop(with_valid):
    bs, lp = 16, 96
    x = torch.randn(2, lp, 3, 24)
    valid = _pool_valid(lp, bs) if with_valid else None
    got = block_mean_pool(x, valid, bs, backend="torch")
    assert got.dtype == torch.float32 and got.shape == (2, 3, lp // bs, 24)
    torch.testing.assert_close(got.double(), loop_pool(x, valid, bs), rtol=1e-6, atol=1e-6)
    if with_valid:
        assert torch.all(got[:, :, 1] == 0)  # the block without valid tokens


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bs,D", [(32, 24), (16, 64), (64, 80)])
@pytest.mark.parametrize("with_valid", [True, False], ids=["valid", "novalid"])
def test_triton_pool_matches_torch(dtype, bs, D, with_valid):
    pytest.importorskip("triton")
    lp = 4 * bs
    x = (torch.randn(1, lp, 2, D) * 3 + 1).to(dtype)
    valid = _pool_valid(lp, bs, seed=bs) if with_valid else None
    ref = block_mean_pool(x, valid, bs, backend="torch")
    got = block_mean_pool(x, valid, bs, backend="triton")
    # Both sum the same upcast values in fp32 (in different orders).
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    if with_valid:
        assert torch.all(got[:, :, 1] == 0)


def test_triton_pool2_and_strided_inputs():
    pytest.importorskip("triton")
    bs, lp = 32, 128
    qkv = torch.randn(1, lp, 3, 2, 24)  # q, k as strided views of one packed tensor
    q, k = qkv[:, :, 0], qkv[:, :, 1]
    valid = _pool_valid(lp, bs)
    qb, kb = block_mean_pool2(q, k, valid, bs, backend="triton")
    torch.testing.assert_close(qb, block_mean_pool(q, valid, bs, backend="torch"), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kb, block_mean_pool(k, valid, bs, backend="torch"), rtol=1e-5, atol=1e-6)
    tq, tk = block_mean_pool2(q, k, valid, bs, backend="torch")
    assert torch.equal(tq, block_mean_pool(q, valid, bs, backend="torch"))
    assert torch.equal(tk, block_mean_pool(k, valid, bs, backend="torch"))


def test_pool_rejects_bad_inputs():
    x = torch.randn(1, 40, 2, 8)
    with pytest.raises(ValueError, match="multiple of block_size"):
        block_mean_pool(x, None, 16, backend="torch")
    with pytest.raises(ValueError, match="key_valid"):
        block_mean_pool(x[:, :32], torch.ones(40, dtype=torch.bool), 16, backend="torch")
    with pytest.raises(ValueError, match="unknown pool backend"):
        block_mean_pool(x[:, :32], None, 16, backend="cuda")


# ------------------------------------------------------------------------------------------------------------
# Draft mask
# ------------------------------------------------------------------------------------------------------------
MASK_CASES = [
    (TokenLayout(3, 10, 20, 5, "first"), 32, (4, 8)),
    (TokenLayout(2, 9, 13, 40, "last"), 32, (4, 8)),
    (TokenLayout(2, 12, 24), 32, (4, 8)),
    (TokenLayout(2, 10, 20, 7, "last"), 128, (8, 16)),
]


def _perm_inputs(layout, bs, patch, B=2, H=3, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    perm = draft_permutation(layout, bs, patch)
    q, k, v = (torch.randn(B, layout.num_tokens, H, D, generator=g) for _ in range(3))
    return perm, q, k, v


@pytest.mark.parametrize("sparsity", [0.7, 0.9])
@pytest.mark.parametrize("case", MASK_CASES, ids=_case_id)
def test_draft_mask_matches_oracle(case, sparsity):
    layout, bs, patch = case
    perm, q, k, _ = _perm_inputs(layout, bs, patch)
    qp, kp = perm.apply(q), perm.apply(k)
    mask = draft_block_mask(qp, kp, layout, sparsity, block_size=bs, patch=patch, pool_backend="torch")
    assert isinstance(mask, BlockMask) and mask.block_size == bs
    if perm.num_slots == perm.num_tokens:
        assert mask.key_valid is None  # nothing to mask: the backends skip their key-masking path
    else:
        assert torch.equal(mask.key_valid, perm.key_valid)
    dense = mask.to_dense()
    roles = draft_block_roles(layout, bs, patch)
    B, H = q.shape[0], q.shape[2]
    assert dense.shape == (B, H, roles.num_blocks, roles.num_blocks)
    assert torch.equal(dense, brute_block_mask(qp, kp, layout, sparsity, bs, patch))

    S = roles.num_video_blocks
    vv = dense[:, :, roles.video_blocks, roles.video_blocks]
    n_keep = draft_keep_count(S, sparsity)
    assert n_keep == max(1, math.ceil((1 - Fraction(str(sparsity))) * S * S))
    kept = vv.flatten(2).sum(-1)
    assert torch.all(kept >= n_keep) and torch.all(kept <= n_keep + S)
    assert torch.all(vv.diagonal(dim1=-2, dim2=-1))
    assert torch.all(dense.any(-1))  # every query block keeps a block
    assert not torch.equal(vv[:, 0], vv[:, 1])  # per-head masks
    assert torch.all(dense[:, :, roles.text_blocks, :]) and torch.all(dense[:, :, :, roles.text_blocks])


def test_draft_mask_triton_pool_matches_torch_pool():
    pytest.importorskip("triton")
    layout, bs, patch = TokenLayout(2, 8, 13, 5, "first"), 32, (4, 8)
    perm, q, k, _ = _perm_inputs(layout, bs, patch, B=1, H=2)
    qp, kp = perm.apply(q), perm.apply(k)
    ref = draft_block_mask(qp, kp, layout, 0.6, block_size=bs, patch=patch, pool_backend="torch")
    tri = draft_block_mask(qp, kp, layout, 0.6, block_size=bs, patch=patch, pool_backend="triton")
    assert torch.equal(tri.to_dense(), ref.to_dense()) and torch.equal(tri.key_valid, ref.key_valid)


def test_draft_mask_extremes_and_validation():
    layout, bs, patch = TokenLayout(2, 8, 16, 3, "first"), 32, (4, 8)
    perm, q, k, _ = _perm_inputs(layout, bs, patch)
    qp, kp = perm.apply(q), perm.apply(k)
    roles = draft_block_roles(layout, bs, patch)
    dense0 = draft_block_mask(qp, kp, layout, 0.0, block_size=bs, patch=patch).to_dense()
    assert torch.all(dense0)
    # Sparsity close to 1 keeps one entry per head plus the diagonal.
    vv = draft_block_mask(qp, kp, layout, 0.999, block_size=bs, patch=patch).to_dense()[
        :, :, roles.video_blocks, roles.video_blocks
    ]
    S = roles.num_video_blocks
    assert draft_keep_count(S, 0.999) == 1
    assert torch.all(vv.flatten(2).sum(-1) <= S + 1) and torch.all(vv.diagonal(dim1=-2, dim2=-1))
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="sparsity"):
            draft_block_mask(qp, kp, layout, bad, block_size=bs, patch=patch)
    with pytest.raises(ValueError, match="permuted by draft_permutation"):
        draft_block_mask(q, k, layout, 0.5, block_size=bs, patch=patch)


@pytest.mark.parametrize("sparsity", [0.0, 0.7, 0.999])
@pytest.mark.parametrize("case", MASK_CASES, ids=_case_id)
def test_draft_mask_summary_is_known_without_sync(case, sparsity):
    """The draft mask's summary (no empty query block by construction, density from the kept count copied
    without blocking) equals BlockMask's own reduction, padded layouts included."""
    layout, bs, patch = case
    perm, q, k, _ = _perm_inputs(layout, bs, patch, seed=2)
    mask = draft_block_mask(perm.apply(q), perm.apply(k), layout, sparsity, block_size=bs, patch=patch)
    assert isinstance(mask, DraftBlockMask)
    plain = BlockMask(mask.kv_num_blocks, mask.kv_indices, mask.block_size, mask.key_valid)
    assert mask.empty_query_blocks == plain.empty_query_blocks == 0
    assert mask.density == plain.density


@pytest.mark.gpu
def test_draft_launch_path_has_no_host_sync():
    """On CUDA, building the draft mask, the kernel entry's require_keys check and the launch run without a host
    sync (after a warm-up call has cached the permutation's device copies and compiled the kernels); the density
    the method reports is read afterwards."""
    pytest.importorskip("triton")
    layout, bs, patch = TokenLayout(2, 8, 13, 5, "first"), 32, (4, 8)
    _, q, k, v = _perm_inputs(layout, bs, patch, B=1, H=2, D=64, seed=4)
    q, k, v = (t.cuda().half() for t in (q, k, v))
    kw = dict(block_size=bs, patch=patch, backend="triton", return_mask=True, require_keys=True)
    draft_attention(q, k, v, layout, 0.75, **kw)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _, mask = draft_attention(q, k, v, layout, 0.75, **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    plain = BlockMask(mask.kv_num_blocks, mask.kv_indices, mask.block_size, mask.key_valid)
    assert mask.density == plain.density and plain.empty_query_blocks == 0


# ------------------------------------------------------------------------------------------------------------
# Draft attention end to end
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", MASK_CASES, ids=_case_id)
def test_draft_attention_matches_oracle(case):
    layout, bs, patch = case
    perm, q, k, v = _perm_inputs(layout, bs, patch, D=24, seed=1)
    out, mask = draft_attention(
        q, k, v, layout, 0.75, block_size=bs, patch=patch, backend="reference", return_mask=True
    )
    assert out.shape == q.shape and out.dtype == q.dtype
    oracle_blocks = brute_block_mask(perm.apply(q), perm.apply(k), layout, 0.75, bs, patch)
    assert torch.equal(mask.to_dense(), oracle_blocks)
    torch.testing.assert_close(
        out.double(), brute_attention(q, k, v, layout, oracle_blocks, bs, patch), rtol=1e-5, atol=1e-5
    )


def test_draft_attention_frame_smaller_than_patch():
    """One mostly-padding patch per frame (S = frames): the map is tiny and still well formed."""
    for layout in (TokenLayout(1, 3, 5, 4, "last"), TokenLayout(2, 3, 5)):
        bs, patch = 32, (4, 8)
        perm, q, k, v = _perm_inputs(layout, bs, patch, D=8, seed=4)
        out, mask = draft_attention(
            q, k, v, layout, 0.9, block_size=bs, patch=patch, backend="reference", return_mask=True
        )
        blocks = brute_block_mask(perm.apply(q), perm.apply(k), layout, 0.9, bs, patch)
        assert torch.equal(mask.to_dense(), blocks)
        torch.testing.assert_close(
            out.double(), brute_attention(q, k, v, layout, blocks, bs, patch), rtol=1e-5, atol=1e-5
        )


def test_draft_attention_dense_limit_and_scale():
    """Sparsity 0 keeps everything: plain softmax attention over the real tokens (padding never attended)."""
    layout, bs, patch = TokenLayout(2, 10, 20, 7, "last"), 32, (4, 8)
    _, q, k, v = _perm_inputs(layout, bs, patch, D=24, seed=2)
    for scale in (None, 0.3):
        out = draft_attention(q, k, v, layout, 0.0, block_size=bs, patch=patch, scale=scale, backend="reference")
        ref = torch.nn.functional.scaled_dot_product_attention(
            *(t.transpose(1, 2) for t in (q, k, v)), scale=scale
        ).transpose(1, 2)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["gather", "triton", pytest.param("flex", marks=pytest.mark.slow)])
def test_draft_attention_other_backends(backend):
    """Other backends match the reference end to end once they honour ``BlockMask.key_valid`` (skipped until then).

    A mismatch is skipped only when it is the backend attending padding keys: with a huge value in v's padding
    slots, such a backend's output shows it at once.
    """
    if backend == "triton":
        pytest.importorskip("triton")
    layout, bs, patch = TokenLayout(2, 8, 13, 5, "first"), 32, (4, 8)
    perm, q, k, v = _perm_inputs(layout, bs, patch, B=1, H=2, D=64, seed=3)
    kw = dict(block_size=bs, patch=patch, return_mask=True)
    ref, mask = draft_attention(q, k, v, layout, 0.75, backend="reference", **kw)
    out, _ = draft_attention(q, k, v, layout, 0.75, backend=backend, **kw)
    if not torch.allclose(out, ref, rtol=1e-4, atol=1e-4):
        qp, kp, vp = (perm.apply(t) for t in (q, k, v))
        vp = vp.masked_fill(~perm.key_valid[None, :, None, None], 1e4)
        if block_sparse_attention(qp, kp, vp, mask, backend=backend).abs().max() > 100:
            pytest.skip(f"backend {backend!r} does not honour BlockMask.key_valid yet")
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------------------
# AOT compile of the pooling kernel (no GPU needed)
# ------------------------------------------------------------------------------------------------------------
AOT_DTYPES = ("fp16", "bf16", "fp32")
AOT_HEAD_DIMS = (64, 128)
AOT_BLOCK_SIZES = (128,)  # DraftAttention's block (one 8x16 patch)
SMEM_BUDGET = 16 * 1024  # the kernel only needs shared memory for its reduction; anything more is a bug


def _aot_worker(arch: int) -> None:
    import triton
    from accel.attention_kernels import draft_triton as dt
    from triton.backends.compiler import GPUTarget

    from tests.kernels.test_triton_aot import _ptxas_usage, jit_signature

    torch_dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    fn = dt._block_mean_pool_kernel
    for dtype_name in AOT_DTYPES:
        for d in AOT_HEAD_DIMS:
            for bs in AOT_BLOCK_SIZES:
                for has_valid in (True, False):
                    # A representative call: [2, 32*bs, 24, d] contiguous, q and k pooled together.
                    x = torch.empty(2, 32 * bs, 24, d, dtype=torch_dtypes[dtype_name], device="meta")
                    out = torch.empty(2, 2, 24, 32, d, dtype=torch.float32, device="meta")
                    valid = torch.empty(32 * bs, dtype=torch.uint8, device="meta") if has_valid else None
                    constexprs = dt.pool_constexprs(d, bs, has_valid, interpret=False)
                    values = dt.pool_kernel_args(x, x, valid, out)
                    sig, constexprs, attrs = jit_signature(fn, constexprs, values)
                    row = dict(arch=arch, dtype=dtype_name, head_dim=d, block_size=bs, has_valid=has_valid)
                    t0 = time.perf_counter()
                    try:
                        kernel = triton.compile(
                            triton.compiler.ASTSource(fn, sig, constexprs, attrs),
                            target=GPUTarget("cuda", arch, 32),
                            options=dict(num_warps=dt.GPU_WARPS),
                        )
                        usage = _ptxas_usage(kernel.asm["ptx"], arch)
                        row.update(ok=True, shared=int(kernel.metadata.shared), **usage)
                    except Exception as exc:  # reported (and failed) by the test
                        row.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:2000]}")
                    row["seconds"] = round(time.perf_counter() - t0, 2)
                    print(json.dumps(row), flush=True)


def test_pool_kernel_aot_compiles_for_h100():
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.kernels.test_draft", "90"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    print("\n" + "\n".join(json.dumps(r) for r in rows))
    assert len(rows) == len(AOT_DTYPES) * len(AOT_HEAD_DIMS) * len(AOT_BLOCK_SIZES) * 2
    failed = [r for r in rows if not r["ok"]]
    assert not failed, failed
    assert all(r["regs"] > 0 for r in rows), "could not parse ptxas -v output"
    assert all(r["spill_stores"] == 0 and r["spill_loads"] == 0 for r in rows), rows
    assert all(r["shared"] <= SMEM_BUDGET for r in rows), rows


if __name__ == "__main__":
    _aot_worker(int(sys.argv[1]))
