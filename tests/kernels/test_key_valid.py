"""``BlockMask.key_valid``: padding keys are never attended, by any backend.

Every case mixes three kinds of padding: keys scattered inside kept blocks, one key block that is entirely
padding, and a query block whose only kept key block is that padded block (so its rows have no valid key: zeros
and LSE ``-inf``, like rows with no kept block). Padding keys hold random values here, not the zeros a
:class:`~accel.attention_kernels.permute.TokenPermutation` writes, so any leak shows up in the output.

The oracle is the ``reference`` backend (dense fp32 with ``BlockMask.token_mask``), itself checked against a
brute-force float64 attention that builds the token mask from the dense block mask by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from accel.attention_kernels import BlockMask, block_sparse_attention
from accel.attention_kernels.naive import reference_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Max abs error against the fp32 oracle run on the same (rounded) inputs. On CPU every backend computes in fp32
# and the error is the output's rounding for half types (|out| < 2: at most 2**-9 for bf16, 2**-12 for fp16,
# rounding to nearest). On a GPU the Triton kernel runs P@V with P in the input dtype: twice that, plus slack.
if DEVICE == "cpu":
    OUT_TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
else:
    OUT_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
LSE_TOL = {torch.float32: 1e-5, torch.float16: 2e-4, torch.bfloat16: 2e-4}


@dataclass(frozen=True)
class Case:
    B: int
    H: int
    Sq: int
    Sk: int
    D: int
    bs: int
    mask_bh: tuple[int, int]  # (1, 1) broadcast, (1, H) per head (batch-broadcast), (B, H)
    padded_block: int  # a key block that is all padding
    trapped_q_block: int  # a query block whose only kept key block is `padded_block`
    empty_q_block: int | None = None  # a query block with no kept block at all

    @property
    def id(self) -> str:
        mb, mh = self.mask_bh
        kind = "bcast" if (mb, mh) == (1, 1) else ("perhead" if mb == 1 else "perbatchhead")
        return f"q{self.Sq}k{self.Sk}-D{self.D}-bs{self.bs}-{kind}-B{self.B}H{self.H}"


CASES = [
    # ragged key tail (200 = 3 * 64 + 8), per-head mask broadcast over the batch, plus a query block with no kept block
    Case(2, 2, 200, 200, 64, 64, mask_bh=(1, 2), padded_block=2, trapped_q_block=0, empty_q_block=3),
    # one mask for every batch element and head; padded head dim; Sq != Sk
    Case(1, 2, 130, 300, 80, 64, mask_bh=(1, 1), padded_block=1, trapped_q_block=1),
    # whole 128-key blocks (EVEN_K), a mask per batch element and head
    Case(2, 2, 256, 256, 64, 128, mask_bh=(2, 2), padded_block=0, trapped_q_block=1),
]
CASE_IDS = [c.id for c in CASES]


def make_inputs(case: Case, dtype: torch.dtype, seed: int = 0, device=DEVICE):
    """q, k, v, the dense block mask ``[mb, mh, QB, KB]`` and the BlockMask with its key_valid."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(case.B, case.Sq, case.H, case.D, generator=g).to(dtype).to(device)
    k = torch.randn(case.B, case.Sk, case.H, case.D, generator=g).to(dtype).to(device)
    v = torch.randn(case.B, case.Sk, case.H, case.D, generator=g).to(dtype).to(device)
    qb, kb = math.ceil(case.Sq / case.bs), math.ceil(case.Sk / case.bs)
    dense = torch.rand(*case.mask_bh, qb, kb, generator=g) < 0.6
    dense[..., case.trapped_q_block, :] = False
    dense[..., case.trapped_q_block, case.padded_block] = True
    if case.empty_q_block is not None:
        dense[..., case.empty_q_block, :] = False
    # Scattered padding (about a quarter of the keys), one all-padding block, and a few real keys kept in every
    # other block so that only the trapped query block loses all its keys.
    key_valid = torch.rand(case.Sk, generator=g) >= 0.25
    key_valid[case.padded_block * case.bs : (case.padded_block + 1) * case.bs] = False
    for b in range(kb):
        if b != case.padded_block:
            key_valid[b * case.bs] = True
    mask = BlockMask.from_dense(dense, case.bs, key_valid).to(device)
    return q, k, v, dense, mask


def oracle(q, k, v, mask, scale=None):
    """The reference backend on fp32 copies of the inputs: ``(out fp32, lse fp32)``."""
    return reference_attention(q.float(), k.float(), v.float(), mask, scale)


def compare(name: str, q, out, lse, ref_out, ref_lse, out_tol=None, lse_tol=None) -> dict:
    """Assert out/LSE against the oracle; rows with no valid key must be exact zeros with LSE -inf."""
    dtype = q.dtype
    out_tol = OUT_TOL[dtype] if out_tol is None else out_tol
    lse_tol = LSE_TOL[dtype] if lse_tol is None else lse_tol
    assert out.shape == q.shape and out.dtype == dtype
    assert not out.isnan().any()
    empty = torch.isneginf(ref_lse)  # [B, H, Sq]
    assert empty.any() and not empty.all(), "the case must have rows with and without valid keys"
    empty_rows = empty.transpose(1, 2)  # [B, Sq, H]
    assert (out[empty_rows] == 0).all(), "rows with no valid key must be zeros"
    out_err = (out.float() - ref_out).abs()[~empty_rows].max().item()
    errors = {"out": out_err}
    if lse is not None:
        assert lse.shape == ref_lse.shape and lse.dtype == torch.float32 and not lse.isnan().any()
        assert torch.equal(torch.isneginf(lse), empty), "LSE -inf pattern differs from the oracle's"
        errors["lse"] = (lse[~empty] - ref_lse[~empty]).abs().max().item()
    print(f"\n[key-valid] {name}: " + ", ".join(f"{k}={v:.3g}" for k, v in errors.items()))
    assert out_err <= out_tol, f"{name}: out error {out_err:.3g} > {out_tol:g}"
    if lse is not None:
        assert errors["lse"] <= lse_tol, f"{name}: LSE error {errors['lse']:.3g} > {lse_tol:g}"
    return errors


# ------------------------------------------------------------------------------------------------------------
# The oracle itself
# ------------------------------------------------------------------------------------------------------------
def brute_force(q, k, v, dense, key_valid, bs, scale):
    """float64 attention over a token mask built by hand from the dense block mask and key_valid."""
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    qi = torch.arange(Sq)[:, None] // bs
    kj = torch.arange(Sk)[None, :] // bs
    out = torch.zeros(B, Sq, H, D, dtype=torch.float64)
    lse = torch.full((B, H, Sq), float("-inf"), dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            blocks = dense[b if dense.shape[0] > 1 else 0, h if dense.shape[1] > 1 else 0]  # [QB, KB]
            allowed = blocks[qi, kj] & key_valid[None, :]  # [Sq, Sk]
            qh, kh, vh = (t[b, :, h].double() for t in (q, k, v))
            for i in range(Sq):
                keys = torch.nonzero(allowed[i]).flatten()
                if keys.numel() == 0:
                    continue
                s = (kh[keys] @ qh[i]) * scale
                lse[b, h, i] = torch.logsumexp(s, 0)
                out[b, i, h] = torch.softmax(s, 0) @ vh[keys]
    return out, lse


@pytest.mark.parametrize("case", CASES[:2], ids=CASE_IDS[:2])
def test_reference_matches_brute_force(case: Case):
    q, k, v, dense, mask = make_inputs(case, torch.float32, device="cpu")
    scale = case.D**-0.5
    want_out, want_lse = brute_force(q, k, v, dense, mask.key_valid, case.bs, scale)
    out, lse = block_sparse_attention(q, k, v, mask, backend="reference", return_lse=True)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(want_lse))
    compare(f"reference-vs-bruteforce-{case.id}", q, out, lse, want_out.float(), want_lse.float())
    # key_valid changes the answer (the case is not trivially unaffected by it)
    no_pad = reference_attention(q, k, v, mask.with_key_valid(None))[0]
    assert (no_pad - out).abs().max() > 1e-2


# ------------------------------------------------------------------------------------------------------------
# Backends against the oracle
# ------------------------------------------------------------------------------------------------------------
# gather: torch's CPU flash kernel per query block (CPU only); sdpa: the device's own fused attention over contiguous
# key runs, merged by LSE (any device).
SDPA_BACKENDS = [(b, d) for b in ("gather", "sdpa") for d in DTYPES if not (b == "gather" and d == "fp16")]


@pytest.mark.parametrize("backend,dtype_name", SDPA_BACKENDS, ids=[f"{b}-{d}" for b, d in SDPA_BACKENDS])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fused_sdpa_backends(case: Case, backend: str, dtype_name: str):
    if backend == "gather" and DEVICE != "cpu":
        pytest.skip("the gather backend runs on CPU only")
    q, k, v, _, mask = make_inputs(case, DTYPES[dtype_name])
    ref_out, ref_lse = oracle(q, k, v, mask)
    out, lse = block_sparse_attention(q, k, v, mask, backend=backend, return_lse=True)
    compare(f"{backend}-{case.id}-{dtype_name}", q, out, lse, ref_out, ref_lse)


@pytest.mark.parametrize("case", CASES[:2], ids=CASE_IDS[:2])
def test_flex(case: Case):
    """Compiled FlexAttention with the key-valid mask_mod (one compile per case; fp32)."""
    q, k, v, _, mask = make_inputs(case, torch.float32)
    ref_out, ref_lse = oracle(q, k, v, mask)
    out = block_sparse_attention(q, k, v, mask, backend="flex")
    compare(f"flex-{case.id}-fp32", q, out, None, ref_out, ref_lse)
    # with the LSE (on CPU flex hands this to the gather path)
    out, lse = block_sparse_attention(q, k, v, mask, backend="flex", return_lse=True)
    compare(f"flex-lse-{case.id}-fp32", q, out, lse, ref_out, ref_lse)


def test_flex_new_key_valid_does_not_recompile():
    """A new mask (new key_valid) with the same shapes reuses the compiled kernel: the mask_mod's table is an
    input, not a constant, so layers with different paddings cannot exhaust the recompile limit."""
    from torch._dynamo.utils import counters

    case = CASES[0]
    q, k, v, _, mask = make_inputs(case, torch.float32)
    block_sparse_attention(q, k, v, mask, backend="flex")  # compiled (cached if test_flex ran first)
    graphs = counters["stats"]["unique_graphs"]
    for seed in (5, 6):
        _, _, _, _, other = make_inputs(case, torch.float32, seed=seed)
        out = block_sparse_attention(q, k, v, other, backend="flex")
        compare(f"flex-newmask-seed{seed}", q, out, None, *oracle(q, k, v, other))
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_triton(case: Case, dtype_name: str):
    pytest.importorskip("triton")
    q, k, v, _, mask = make_inputs(case, DTYPES[dtype_name])
    ref_out, ref_lse = oracle(q, k, v, mask)
    out, lse = block_sparse_attention(q, k, v, mask, backend="triton", return_lse=True)
    compare(f"triton-{case.id}-{dtype_name}", q, out, lse, ref_out, ref_lse)


# The GPU config table's tiles (128x64 / 64x64 for half types, 64x32 / 32x32 for fp32) through the interpreter,
# with and without EVEN_K.
GPU_TILE_CASES = [("fp16", CASES[2]), ("fp32", CASES[0]), ("fp32", CASES[1])]


@pytest.mark.parametrize("dtype_name,case", GPU_TILE_CASES, ids=[f"{c.id}-{d}" for d, c in GPU_TILE_CASES])
def test_triton_gpu_tile_configs(dtype_name: str, case: Case):
    pytest.importorskip("triton")
    from accel.attention_kernels import triton_block_sparse as tbs

    dtype = DTYPES[dtype_name]
    cfg = tbs.pick_config(tbs.padded_head_dim(case.D), dtype, case.bs, interpret=False)
    q, k, v, _, mask = make_inputs(case, dtype, seed=1)
    scale = case.D**-0.5
    out, lse = tbs._launch(
        q, k, v, mask.kv_num_blocks, mask.kv_indices, case.bs, scale, config=cfg, key_valid=mask.key_valid
    )
    compare(f"triton-{case.id}-{dtype_name}-tile{cfg.block_m}x{cfg.block_n}", q, out, lse, *oracle(q, k, v, mask))


def test_triton_op_under_torch_compile():
    """The mask's key_valid reaches the opaque custom op from a fullgraph-compiled function."""
    pytest.importorskip("triton")
    from torch._dynamo.testing import EagerAndRecordGraphs

    case = CASES[1]
    q, k, v, _, mask = make_inputs(case, torch.float32)

    def fn(q, k, v):
        out, lse = block_sparse_attention(q, k, v, mask, backend="triton", return_lse=True)
        return out * 2, lse

    torch._dynamo.reset()
    out, lse = torch.compile(fn, backend=EagerAndRecordGraphs(), fullgraph=True)(q, k, v)
    ref_out, ref_lse = oracle(q, k, v, mask)
    compare("triton-compiled", q, out / 2, lse, ref_out, ref_lse)


# ------------------------------------------------------------------------------------------------------------
# Masks without padding behave as before
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["gather", "sdpa", "triton"])
def test_all_valid_key_valid_equals_none(backend: str):
    """An all-True key_valid gives the key_valid=None results (same masking, other kernel variant): bit-identical
    on CPU; on a GPU the two compiled variants may schedule differently, so within the output tolerance."""
    if backend == "gather" and DEVICE != "cpu":
        pytest.skip("the gather backend runs on CPU only")
    if backend == "triton":
        pytest.importorskip("triton")
    case = CASES[0]
    q, k, v, _, mask = make_inputs(case, torch.float16)
    plain = mask.with_key_valid(None)
    ones = mask.with_key_valid(torch.ones(case.Sk, dtype=torch.bool, device=DEVICE))
    out0, lse0 = block_sparse_attention(q, k, v, plain, backend=backend, return_lse=True)
    out1, lse1 = block_sparse_attention(q, k, v, ones, backend=backend, return_lse=True)
    tol = 0.0 if DEVICE == "cpu" else OUT_TOL[torch.float16]
    torch.testing.assert_close(out1, out0, rtol=0, atol=tol)
    torch.testing.assert_close(lse1, lse0, rtol=0, atol=tol)


# ------------------------------------------------------------------------------------------------------------
# The custom op's key_valid argument
# ------------------------------------------------------------------------------------------------------------
def _op_args(case: Case, dtype=torch.float16):
    q, k, v, _, mask = make_inputs(case, dtype)
    return (q, k, v, mask.kv_num_blocks, mask.kv_indices, mask.block_size, case.D**-0.5, mask.key_valid)


def test_op_key_valid_schema_fake_and_validation():
    pytest.importorskip("triton")
    from accel.attention_kernels import triton_block_sparse  # noqa: F401  (registers the op)
    from torch._subclasses.fake_tensor import FakeTensorMode

    op = torch.ops.accel.block_sparse_attention_fwd
    assert "Tensor? key_valid=None" in str(op.default._schema)
    case = Case(1, 1, 100, 70, 64, 64, mask_bh=(1, 1), padded_block=1, trapped_q_block=1)
    args = _op_args(case)
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        out, lse = op(*fake)
    assert out.shape == (1, 100, 1, 64) and lse.shape == (1, 1, 100) and lse.dtype == torch.float32
    q, k, v, kv_num, kv_idx, bs, scale, key_valid = args
    with pytest.raises(ValueError, match="key_valid"):
        op(q, k, v, kv_num, kv_idx, bs, scale, key_valid[:-1])
    with pytest.raises(ValueError, match="key_valid"):
        op(q, k, v, kv_num, kv_idx, bs, scale, key_valid.to(torch.uint8))


# ------------------------------------------------------------------------------------------------------------
# GPU-only: production sizes
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("D", [64, 80, 128])
@pytest.mark.parametrize("bs", [64, 128])
def test_gpu_production_sizes(dtype_name: str, D: int, bs: int):
    from tests.kernels.test_triton_kernel import check_against_reference

    case = Case(2, 4, 2000, 3100, D, bs, mask_bh=(2, 4), padded_block=5, trapped_q_block=3, empty_q_block=7)
    q, k, v, _, mask = make_inputs(case, DTYPES[dtype_name], device="cuda")
    out, lse = block_sparse_attention(q, k, v, mask, backend="triton", return_lse=True)
    check_against_reference(q, k, v, mask, D**-0.5, out, lse)
    if D not in (64, 128):
        return
    # flex on CUDA (Inductor's Triton template evaluates the key-valid mask_mod)
    out = block_sparse_attention(q, k, v, mask, backend="flex")
    tol = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}[q.dtype]
    compare(f"gpu-flex-{case.id}-{dtype_name}", q, out, None, *oracle(q, k, v, mask), out_tol=tol)
