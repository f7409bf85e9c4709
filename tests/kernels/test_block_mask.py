"""BlockMask layout, the reference oracle, the LSE merge and the flex backend."""

import pytest
import torch
import torch.nn.functional as F
from accel.attention_kernels import BlockMask, block_sparse_attention, merge_attention
from accel.attention_kernels.cpu_gather import gather_block_sparse
from accel.attention_kernels.naive import reference_attention, reference_merge


def random_block_mask(b, h, qb, kb, density, bs, seed=0, empty_rows=()):
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(b, h, qb, kb, generator=g) < density
    for r in empty_rows:
        dense[..., r, :] = False
    return BlockMask.from_dense(dense, bs)


def test_from_dense_round_trip_and_layout():
    dense = torch.rand(2, 3, 5, 7) < 0.4
    dense[0, 0, 1] = False
    dense[1, 2, 4] = True
    m = BlockMask.from_dense(dense, 32)
    assert torch.equal(m.to_dense(), dense)
    assert m.kv_num_blocks.dtype == torch.int32 and m.kv_indices.dtype == torch.int32
    assert torch.equal(m.kv_num_blocks, dense.sum(-1).int())
    # kept indices come first, ascending
    for b, h, r in [(0, 1, 2), (1, 2, 4)]:
        n = int(m.kv_num_blocks[b, h, r])
        assert m.kv_indices[b, h, r, :n].tolist() == torch.nonzero(dense[b, h, r]).flatten().tolist()
    assert m.density == pytest.approx(dense.float().mean().item())


def test_token_mask_and_length_checks():
    m = BlockMask.from_dense(torch.tensor([[True, False], [False, True]]), 16)
    tok = m.token_mask(20, 30)
    assert tok.shape == (1, 1, 20, 30)
    assert tok[0, 0, :16, :16].all() and not tok[0, 0, :16, 16:].any() and tok[0, 0, 16:, 16:].all()
    with pytest.raises(ValueError, match="does not fit"):
        m.check_lengths(40, 30)
    with pytest.raises(ValueError, match="power of two"):
        BlockMask.from_dense(torch.ones(1, 1, 1, 1, dtype=torch.bool), 48)
    with pytest.raises(TypeError):
        BlockMask.from_dense(torch.ones(1, 1, 1, 1), 16)


def _sdpa_error(q, k, v, mask, ref_out, keep_rows):
    tok = mask.token_mask(q.shape[1], k.shape[1])
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=tok
    ).transpose(1, 2)
    return (o.float() - ref_out.float())[:, keep_rows].abs().max().item()


def test_reference_matches_sdpa_and_handles_empty_rows():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 100, 3, 32) for _ in range(3))
    m = random_block_mask(1, 3, 4, 4, 0.5, 32, empty_rows=(1,))
    out, lse = reference_attention(q, k, v, m)
    assert out[:, 32:64].abs().max() == 0
    assert torch.isneginf(lse[:, :, 32:64]).all()
    keep = torch.ones(100, dtype=torch.bool)
    keep[32:64] = False
    assert _sdpa_error(q, k, v, m, out, keep) < 1e-5
    # LSE against a direct computation
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * 32**-0.5
    s = s.masked_fill(~m.token_mask(100, 100), float("-inf"))
    want = torch.logsumexp(s, -1)
    fin = torch.isfinite(want)
    assert torch.allclose(lse[fin], want[fin], atol=1e-5)


def test_merge_matches_attention_over_union():
    torch.manual_seed(1)
    q = torch.randn(1, 64, 2, 16)
    k, v = torch.randn(1, 96, 2, 16), torch.randn(1, 96, 2, 16)
    a = BlockMask.from_dense(torch.tensor([[True, False, False], [False, False, False]]), 32)
    b = BlockMask.from_dense(torch.tensor([[False, True, True], [False, False, True]]), 32)
    both = BlockMask.from_dense(a.to_dense() | b.to_dense(), 32)
    o1, l1 = reference_attention(q, k, v, a)
    o2, l2 = reference_attention(q, k, v, b)
    ow, lw = reference_attention(q, k, v, both)
    om, lm = merge_attention(o1, l1, o2, l2)
    assert torch.allclose(om, ow, atol=1e-5) and torch.allclose(lm, lw, atol=1e-5)
    orf, lrf = reference_merge(o1, l1, o2, l2)
    assert torch.allclose(om, orf, atol=1e-6)
    # both partials empty -> zeros and -inf
    e = torch.full_like(l1, float("-inf"))
    oz, lz = merge_attention(torch.zeros_like(o1), e, torch.zeros_like(o1), e)
    assert oz.abs().max() == 0 and torch.isneginf(lz).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gather_backend_matches_reference(dtype):
    torch.manual_seed(2)
    q = torch.randn(2, 150, 2, 24).to(dtype)
    k, v = torch.randn(2, 90, 2, 24).to(dtype), torch.randn(2, 90, 2, 24).to(dtype)
    m = random_block_mask(2, 1, 5, 3, 0.5, 32, empty_rows=(2,))
    out, lse = gather_block_sparse(q, k, v, m, 24**-0.5, rows_per_group=2)
    ro, rl = reference_attention(q, k, v, m)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert (out.float() - ro.float()).abs().max() < tol
    fin = torch.isfinite(rl)
    assert torch.equal(fin, torch.isfinite(lse))
    assert (lse[fin] - rl[fin]).abs().max() < 1e-4


FLEX_CASES = [
    # (Sq, Sk, H, D, dtype, bs, per_head, density)
    (200, 200, 2, 64, torch.float32, 64, True, 0.5),
    (130, 300, 2, 72, torch.float32, 64, False, 0.6),
    (256, 256, 2, 128, torch.float16, 128, True, 1.0),
]


@pytest.mark.parametrize(
    "case",
    FLEX_CASES,
    ids=[f"q{c[0]}_k{c[1]}_d{c[3]}_{str(c[4])[6:]}_bs{c[5]}_{'perhead' if c[6] else 'shared'}" for c in FLEX_CASES],
)
@pytest.mark.parametrize("backend", ["flex", "gather"])
def test_cpu_backends_match_reference(case, backend):
    sq, sk, h, d, dtype, bs, per_head, density = case
    torch.manual_seed(3)
    q = torch.randn(1, sq, h, d).to(dtype)
    k, v = torch.randn(1, sk, h, d).to(dtype), torch.randn(1, sk, h, d).to(dtype)
    qb, kb = -(-sq // bs), -(-sk // bs)
    m = random_block_mask(1, h if per_head else 1, qb, kb, density, bs, empty_rows=(0,) if density < 1 else ())
    out = block_sparse_attention(q, k, v, m, backend=backend)
    ro, rl = reference_attention(q, k, v, m)
    keep = torch.isfinite(rl[0, 0]) if not per_head else torch.isfinite(rl).all(1)[0]
    torch_err = _sdpa_error(q, k, v, m, ro, keep) if keep.any() else 0.0
    ours = (out.float() - ro.float())[:, keep].abs().max().item()
    floor = 1e-6 if dtype == torch.float32 else 1e-3
    assert ours <= 2 * torch_err + floor, (ours, torch_err)
    assert out[:, ~keep].abs().max().item() == 0 if (~keep).any() else True
    # with LSE (on CPU flex hands this to the gather path: Inductor's CPU kernel cannot return it)
    out2, lse = block_sparse_attention(q, k, v, m, backend=backend, return_lse=True)
    assert (out2.float() - ro.float())[:, keep].abs().max().item() <= 2 * torch_err + floor
    fin = torch.isfinite(rl)
    assert torch.equal(fin, torch.isfinite(lse))
    assert (lse[fin] - rl[fin]).abs().max() < 2e-3


def test_public_api_validation():
    q = torch.randn(1, 64, 2, 16)
    m = BlockMask.full(2, 2, 32)
    with pytest.raises(ValueError, match="unknown attention backend"):
        block_sparse_attention(q, q, q, m, backend="cuda")
    with pytest.raises(ValueError, match=r"\[B, S, H, D\]"):
        block_sparse_attention(q[0], q[0], q[0], m)
    with pytest.raises(TypeError, match="one dtype"):
        block_sparse_attention(q, q.half(), q, m, backend="reference")
    with pytest.raises(ValueError, match="does not fit"):
        block_sparse_attention(q[:, :20], q, q, m, backend="reference")
    with pytest.raises(TypeError, match="BlockMask"):
        block_sparse_attention(q, q, q, torch.ones(2, 2, dtype=torch.bool))
    out, lse = block_sparse_attention(q, q, q, m, backend="reference", return_lse=True)
    assert out.shape == q.shape and lse.shape == (1, 2, 64) and lse.dtype == torch.float32
