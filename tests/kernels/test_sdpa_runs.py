"""The run backend (``backend="sdpa"``): its plan partitions the kept blocks exactly, on every mask builder and the
real layouts of every model; and the attention it computes equals the fp32 oracle on full-size-structured masks.

The plan's oracle is brute force: paint every tile and strip block into a ``[QB, KB]`` grid, counting overlaps,
and compare with the mask's dense block grid (blocks without a valid key removed).
"""

import math

import numpy as np
import pytest
import torch
from accel.attention_kernels import (
    BlockMask,
    HeadPattern,
    TokenLayout,
    block_sparse_attention,
    draft_block_mask,
    draft_permutation,
    radial_mask,
    rettention_mask,
)
from accel.attention_kernels.sdpa_runs import plan_mask
from accel.attention_kernels.sparse_vdit import head_block_mask

from tests.real_layouts import MODELS, real_layouts


def _painted(plan, qb, kb, member):
    """Count grid ``[QB, KB]``: how often the plan covers each block for the (batch, head) slice ``member``."""
    grid = np.zeros((qb, kb), dtype=np.int64)
    for slice_plan, members in plan.groups:
        if member not in members:
            continue
        for r0, r1, k0, k1 in slice_plan.tiles:
            assert r1 - r0 >= 1 and k1 - k0 >= 1
            grid[r0:r1, k0:k1] += 1
        for r0, r1, cols in slice_plan.strips:
            assert r1 > r0 and cols.numel() and len(set(cols.tolist())) == cols.numel(), "a strip lists a block twice"
            grid[r0:r1, cols.numpy()] += 1
    return grid


def assert_exact_partition(mask: BlockMask, q_len: int, k_len: int | None = None):
    k_len = k_len or (mask.num_k_blocks * mask.block_size if mask.key_valid is None else mask.key_valid.numel())
    plan = plan_mask(mask, q_len, k_len)
    dense = mask.to_dense().numpy()
    kb = mask.num_k_blocks
    live = np.ones(kb, dtype=bool)
    if mask.key_valid is not None:
        valid = np.zeros(kb * mask.block_size, dtype=bool)
        valid[: mask.key_valid.numel()] = mask.key_valid.numpy()
        live = valid.reshape(kb, -1).any(1)
    seen = set()
    for _, members in plan.groups:
        assert not seen & set(members), "a mask slice has two plans"
        seen |= set(members)
    assert seen == {(b, h) for b in range(dense.shape[0]) for h in range(dense.shape[1])}
    for b, h in seen:
        grid = _painted(plan, dense.shape[2], kb, (b, h))
        want = dense[b, h] & live[None, :]
        assert grid.max() <= 1, f"slice {(b, h)}: a block is covered twice"
        assert np.array_equal(grid.astype(bool), want), f"slice {(b, h)}: covered blocks differ from the mask"
    return plan


@pytest.mark.parametrize("model", MODELS)
def test_plan_partitions_radial_and_rettention_on_real_layouts(model):
    # A sample of the layouts keeps the test short (plans are built in Python, the painting check too); every
    # model's sample spans its resolutions and frame counts.
    layouts = real_layouts(model)[:: 23 if model in ("wan", "hunyuan") else 7]
    for _, lay in layouts:
        for mask in (rettention_mask(lay, 128, 128, 1), radial_mask(lay, 128, 0.2, sink=model == "wan")):
            if mask.num_q_blocks > 1:
                assert_exact_partition(mask, lay.num_tokens)


@pytest.mark.parametrize("model", ["wan", "hunyuan", "flux"])
def test_plan_partitions_sparse_vdit_and_draft_masks(model):
    patterns = (HeadPattern("diagonal", 0), HeadPattern("multidiagonal", 1), HeadPattern("stripe", 0, (0,)),
                HeadPattern("full"), HeadPattern("skip"))  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    for _, lay in real_layouts(model)[::61]:
        for group in head_block_mask(patterns, lay, 128).values():
            assert_exact_partition(group.mask, group.mask.num_q_blocks * 128)
        slots = draft_permutation(lay, 128, (8, 16)).num_slots
        qk = torch.randn(1, slots, 2, 4, generator=gen)
        mask = draft_block_mask(qk, qk.flip(1), lay, 0.9, pool_backend="torch")
        assert_exact_partition(mask, slots)


def test_plan_runs_long_query_runs_on_wan_radial():
    """At Wan 480x832x81 the plan is shared by every head, and nearly every kept block runs in a call of at least
    two query blocks: tall tiles for the near frames and the sink, strips (column runs as tall as a band is wide)
    for the far frames' bands."""
    lay = TokenLayout(21, 30, 52)
    mask = radial_mask(lay, 128, 0.2, sink=True)
    plan = assert_exact_partition(mask, lay.num_tokens, lay.num_tokens)
    ((slice_plan, _),) = plan.groups
    pieces = [(r1 - r0, k1 - k0) for r0, r1, k0, k1 in slice_plan.tiles]
    pieces += [(r1 - r0, c.numel()) for r0, r1, c in slice_plan.strips]
    kept = sum(h * w for h, w in pieces)
    assert sum(h * w for h, w in pieces if h >= 2) / kept > 0.98
    assert len(pieces) < 1000


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_matches_oracle_on_a_wan_shaped_radial_mask(dtype):
    """A real Wan mask structure (9 latent frames of 16 x 16 tokens, 64-token blocks: 36 x 36 blocks, ragged
    nothing) plus a ragged variant: output and LSE against the dense fp32 oracle."""
    for lay in (TokenLayout(9, 16, 16), TokenLayout(9, 15, 17)):
        mask = radial_mask(lay, 64, 0.2, sink=True)
        n = lay.num_tokens
        g = torch.Generator().manual_seed(1)
        q, k, v = (torch.randn(1, n, 2, 32, generator=g).to(dtype) for _ in range(3))
        out, lse = block_sparse_attention(q, k, v, mask, backend="sdpa", return_lse=True)
        ref, ref_lse = block_sparse_attention(q.float(), k.float(), v.float(), mask, backend="reference",
                                              return_lse=True)  # fmt: skip
        tol = 1e-5 if dtype == torch.float32 else 8e-3
        assert out.dtype == dtype and out.shape == q.shape
        assert (out.float() - ref).abs().max().item() <= tol
        assert (lse - ref_lse).abs().max().item() <= 1e-5 if dtype == torch.float32 else 2e-4


def test_heads_with_the_same_mask_share_a_plan_and_distinct_heads_get_their_own():
    bs, n = 16, 150
    qb = math.ceil(n / bs)
    base = torch.rand(qb, qb, generator=torch.Generator().manual_seed(3)) < 0.5
    other = ~base
    dense = torch.stack([base, other, base, base])[None]  # heads 0, 2, 3 alike
    mask = BlockMask.from_dense(dense, bs)
    plan = assert_exact_partition(mask, n)
    members = sorted(sorted(m) for _, m in plan.groups)
    assert members == [[(0, 0), (0, 2), (0, 3)], [(0, 1)]]
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, n, 4, 16, generator=g) for _ in range(3))
    out, lse = block_sparse_attention(q, k, v, mask, backend="sdpa", return_lse=True)
    ref, ref_lse = block_sparse_attention(q, k, v, mask, backend="reference", return_lse=True)
    fin = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), fin)
    assert (out - ref).abs().max().item() <= 1e-5
    assert (lse[fin] - ref_lse[fin]).abs().max().item() <= 1e-5


def test_rows_without_keys_are_zeros_with_lse_minus_inf():
    bs, n = 16, 64
    dense = torch.ones(4, 4, dtype=torch.bool)
    dense[2] = False  # a row with no kept block
    valid = torch.ones(n, dtype=torch.bool)
    valid[48:] = False  # block 3 all padding: row 3 keeps only it
    dense[3] = False
    dense[3, 3] = True
    mask = BlockMask.from_dense(dense, bs, valid)
    q, k, v = (torch.randn(1, n, 1, 8) for _ in range(3))
    out, lse = block_sparse_attention(q, k, v, mask, backend="sdpa", return_lse=True)
    assert torch.equal(out[:, 32:], torch.zeros_like(out[:, 32:]))
    assert torch.isneginf(lse[..., 32:]).all() and torch.isfinite(lse[..., :32]).all()


def test_math_path_for_devices_without_a_fused_lse_kernel_matches_the_fused_one():
    """MPS and XPU run the chunked matmul path; on CPU it must agree with torch's fused kernel (bias included)."""
    from accel.attention_kernels.sdpa_runs import _math_with_lse, attention_with_lse

    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g) for n in (70, 90, 90))
    bias = torch.zeros(1, 1, 1, 90)
    bias[..., 40:50] = float("-inf")
    for b in (None, bias):
        out, lse = attention_with_lse(q, k, v, 0.25, b)
        m_out, m_lse = _math_with_lse(q, k, v, 0.25, b, chunk=32)  # chunked over queries
        assert (m_out - out).abs().max().item() <= 1e-5
        assert (m_lse - lse).abs().max().item() <= 1e-5
