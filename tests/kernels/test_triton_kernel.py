"""The fused Triton block-sparse attention kernel against the dense fp32 oracle.

On CPU hosts the kernel runs under ``TRITON_INTERPRET=1`` (conftest sets it); with CUDA the same grid runs on the
GPU, plus the ``gpu``-marked production-size cases.

Tolerance rule: the kernel's max error against the fp32 reference may be at most twice PyTorch's own error at
the same precision (``scaled_dot_product_attention`` in the input dtype with the expanded token mask), plus a
small absolute floor. Empty rows (no kept key) must be exact zeros with LSE ``-inf``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from accel.attention_kernels import BlockMask, block_sparse_attention
from accel.attention_kernels.naive import reference_attention

triton = pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ABS_FLOOR = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-3}
LSE_TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-3}


@dataclass(frozen=True)
class Case:
    B: int
    H: int
    Sq: int
    Sk: int
    D: int
    bs: int
    density: float
    mask_bh: tuple[int, int] = (1, 1)  # mask batch/head dims: (1, 1) broadcast, (1, H) per head, (B, H)
    empty_q_blocks: tuple[int, ...] = ()  # query blocks forced to count 0
    scale: float | None = None
    packed_qkv: bool = False  # q, k, v as strided views of one [B, S, 3, H, D] tensor

    @property
    def id(self) -> str:
        mb, mh = self.mask_bh
        kind = "bcast" if (mb, mh) == (1, 1) else ("perhead" if mb == 1 else "perbatchhead")
        parts = [
            f"q{self.Sq}k{self.Sk}",
            f"D{self.D}",
            f"bs{self.bs}",
            f"dens{self.density:g}",
            f"{kind}-B{self.B}H{self.H}",
        ]
        if self.empty_q_blocks:
            parts.append("emptyrows")
        if self.scale is not None:
            parts.append(f"scale{self.scale:g}")
        if self.packed_qkv:
            parts.append("packedqkv")
        return "-".join(parts)


CASES = [
    Case(1, 2, 200, 200, 64, 64, 0.4, mask_bh=(1, 2), empty_q_blocks=(1,)),
    Case(2, 2, 130, 300, 80, 128, 0.4),
    Case(2, 2, 130, 300, 72, 64, 0.4, mask_bh=(2, 2), empty_q_blocks=(0,)),
    Case(1, 2, 300, 130, 88, 64, 0.5, mask_bh=(1, 2)),
    Case(1, 2, 256, 256, 128, 128, 1.0),
    Case(1, 2, 192, 192, 96, 64, 1.0, mask_bh=(1, 2), scale=0.3),
    Case(1, 2, 200, 200, 96, 64, 0.0),
    Case(2, 2, 200, 200, 64, 64, 0.4, mask_bh=(1, 2), packed_qkv=True),
]


def make_inputs(case: Case, dtype: torch.dtype, device=DEVICE, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if case.packed_qkv:
        assert case.Sq == case.Sk
        qkv = torch.randn(case.B, case.Sq, 3, case.H, case.D, generator=g).to(dtype).to(device)
        q, k, v = qkv.unbind(2)  # token stride 3*H*D: not contiguous
    else:
        q = torch.randn(case.B, case.Sq, case.H, case.D, generator=g).to(dtype).to(device)
        k = torch.randn(case.B, case.Sk, case.H, case.D, generator=g).to(dtype).to(device)
        v = torch.randn(case.B, case.Sk, case.H, case.D, generator=g).to(dtype).to(device)
    qb, kb = math.ceil(case.Sq / case.bs), math.ceil(case.Sk / case.bs)
    dense = torch.rand(*case.mask_bh, qb, kb, generator=g) < case.density
    if case.density >= 1.0:
        dense[:] = True
    for b in case.empty_q_blocks:
        dense[..., b, :] = False
    mask = BlockMask.from_dense(dense, case.bs).to(device)
    return q, k, v, mask


def check_against_reference(q, k, v, mask, scale, out, lse) -> dict:
    """Assert the tolerance rule; return the errors (printed with ``pytest -s``)."""
    dtype = q.dtype
    B, Sq, H, D = q.shape
    assert out.shape == q.shape and out.dtype == dtype
    assert lse.shape == (B, H, Sq) and lse.dtype == torch.float32
    assert not out.isnan().any() and not lse.isnan().any()

    ref_out, ref_lse = reference_attention(q.float(), k.float(), v.float(), mask, scale)  # fp32 out
    empty = torch.isneginf(ref_lse)  # [B, H, Sq]
    empty_rows = empty.transpose(1, 2)  # [B, Sq, H]
    # Empty rows: exact zeros and LSE -inf; everything else finite.
    assert torch.equal(torch.isneginf(lse), empty), "LSE -inf pattern differs from the reference's empty rows"
    assert torch.isfinite(lse[~empty]).all()
    assert (out[empty_rows] == 0).all(), "rows with no kept block must be zeros"
    errors = {"empty_rows": int(empty.sum())}
    if empty.all():
        return errors

    lse_err = (lse[~empty] - ref_lse[~empty]).abs().max().item()
    assert lse_err <= LSE_TOL[dtype], f"LSE error {lse_err:.3g} > {LSE_TOL[dtype]:g}"

    tok = mask.token_mask(Sq, k.shape[1])
    torch_out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=tok, scale=scale
    ).transpose(1, 2)
    keep = ~empty_rows
    ours = (out.float() - ref_out).abs()[keep].max().item()
    theirs = (torch_out.float() - ref_out).abs()[keep].max().item()
    bound = 2 * theirs + ABS_FLOOR[dtype]
    errors.update(ours=ours, torch=theirs, lse=lse_err)
    assert ours <= bound, f"max error {ours:.3g} > 2 * torch's {theirs:.3g} + {ABS_FLOOR[dtype]:g}"
    return errors


def _report(name: str, errors: dict) -> None:
    print(f"\n[triton-kernel] {name}: " + ", ".join(f"{k}={v:.3g}" for k, v in errors.items()))


# ------------------------------------------------------------------------------------------------------------
# Correctness grid (interpreter on CPU, the real kernel on CUDA)
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_reference(case: Case, dtype_name: str):
    dtype = DTYPES[dtype_name]
    q, k, v, mask = make_inputs(case, dtype)
    scale = case.D**-0.5 if case.scale is None else case.scale
    out, lse = block_sparse_attention(q, k, v, mask, scale=case.scale, backend="triton", return_lse=True)
    _report(f"{case.id}-{dtype_name}", check_against_reference(q, k, v, mask, scale, out, lse))


# The GPU config table's tile shapes (128x64, 64x32, 32x32, ...) run through the interpreter too, so each
# launchable tiling is checked for correctness on CPU, not only the interpreter's default 64x64 tiles.
GPU_TILE_CASES = [
    ("fp16", Case(1, 2, 200, 300, 64, 128, 0.5, mask_bh=(1, 2), empty_q_blocks=(0,))),
    ("bf16", Case(1, 1, 200, 200, 128, 128, 0.6)),
    ("fp16", Case(1, 2, 130, 200, 80, 64, 0.5, mask_bh=(1, 2))),
    ("fp32", Case(1, 1, 100, 200, 64, 64, 0.6)),
    ("fp32", Case(1, 1, 200, 130, 128, 128, 1.0, empty_q_blocks=(0,))),
    ("fp32", Case(1, 2, 100, 100, 64, 32, 0.5, mask_bh=(1, 2))),
    ("fp16", Case(1, 1, 70, 90, 64, 16, 0.5)),
]


@pytest.mark.parametrize("dtype_name,case", GPU_TILE_CASES, ids=[f"{c.id}-{d}" for d, c in GPU_TILE_CASES])
def test_gpu_tile_configs(dtype_name: str, case: Case):
    from accel.attention_kernels import triton_block_sparse as tbs

    dtype = DTYPES[dtype_name]
    cfg = tbs.pick_config(tbs.padded_head_dim(case.D), dtype, case.bs, interpret=False)
    q, k, v, mask = make_inputs(case, dtype, seed=1)
    scale = case.D**-0.5
    out, lse = tbs._launch(q, k, v, mask.kv_num_blocks, mask.kv_indices, case.bs, scale, config=cfg)
    errors = check_against_reference(q, k, v, mask, scale, out, lse)
    _report(f"{case.id}-{dtype_name}-tile{cfg.block_m}x{cfg.block_n}", errors)


def test_unsorted_and_padded_indices_are_safe():
    """Indices out of ascending order (and garbage padding past the count) give the same result."""
    case = Case(1, 1, 200, 300, 64, 64, 0.6, empty_q_blocks=(2,))
    q, k, v, mask = make_inputs(case, torch.float32, seed=3)
    idx = mask.kv_indices.clone()
    for qb in range(idx.shape[2]):
        n = int(mask.kv_num_blocks[0, 0, qb])
        idx[0, 0, qb, :n] = idx[0, 0, qb, :n].flip(0)
        idx[0, 0, qb, n:] = idx.shape[3] - 1  # padding: a real block index, must be ignored
    shuffled = BlockMask(mask.kv_num_blocks, idx, case.bs)
    out, lse = block_sparse_attention(q, k, v, shuffled, backend="triton", return_lse=True)
    _report("unsorted-indices", check_against_reference(q, k, v, mask, case.D**-0.5, out, lse))


def _key_valid_mask(Sq: int, Sk: int, bs: int, seed: int, unsorted: bool, with_key_valid: bool = True) -> BlockMask:
    """A per-head mask with padding keys in the middle (one key block mostly padding, scattered padding elsewhere;
    none without ``with_key_valid``) and, with ``unsorted``, every kept-index list reversed (the last, possibly
    partial key block first)."""
    g = torch.Generator().manual_seed(seed)
    qb, kb = math.ceil(Sq / bs), math.ceil(Sk / bs)
    dense = torch.rand(1, 2, qb, kb, generator=g) < 0.6
    dense[..., kb - 1] = True  # every row keeps the last key block, whose tail is ragged
    key_valid = torch.rand(Sk, generator=g) >= 0.2
    key_valid[bs + 3 : 2 * bs - 5] = False  # a run of padding inside the second block
    key_valid[::bs] = True  # a real key in every block
    if not with_key_valid:
        key_valid = None
    mask = BlockMask.from_dense(dense, bs, key_valid)
    if not unsorted:
        return mask
    idx = mask.kv_indices.clone()
    for h in range(idx.shape[1]):
        for row in range(qb):
            n = int(mask.kv_num_blocks[0, h, row])
            idx[0, h, row, :n] = idx[0, h, row, :n].flip(0)
    return BlockMask(mask.kv_num_blocks, idx, bs, key_valid)


# Interpreter tiles are 64 keys, so 128-key mask blocks hold two sub-tiles: 424 = 3 * 128 + 40 puts a ragged
# sub-tile and a sub-tile wholly past the keys in the last block; 448 = 3 * 128 + 64 is EVEN_K with a sub-tile
# wholly past the keys. 200 = 3 * 64 + 8 with 64-key blocks: one sub-tile per block, the last one ragged.
RAGGED_KEY_VALID = [(424, 128), (448, 128), (200, 64)]


@pytest.mark.parametrize("with_key_valid", [True, False], ids=["keyvalid", "nokeyvalid"])
@pytest.mark.parametrize("unsorted", [False, True], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("Sk,bs", RAGGED_KEY_VALID, ids=[f"k{k}-bs{b}" for k, b in RAGGED_KEY_VALID])
def test_ragged_tail_and_key_valid(Sk: int, bs: int, unsorted: bool, with_key_valid: bool):
    """A partial last tile (peeled off the loop) together with padding keys in the middle, in ascending and in
    reversed index order (where the loop must skip the tiles reaching past the keys and attend the ragged one
    after it). Without key_valid, the reversed EVEN_K case (448) read a sub-tile past the keys unmasked before
    issue 24's loop."""
    g = torch.Generator().manual_seed(5)
    B, H, Sq, D = 1, 2, 160, 64
    q, k, v = (torch.randn(B, S, H, D, generator=g).to(torch.bfloat16) for S in (Sq, Sk, Sk))
    mask = _key_valid_mask(Sq, Sk, bs, seed=6, unsorted=unsorted, with_key_valid=with_key_valid)
    out, lse = block_sparse_attention(q, k, v, mask, backend="triton", return_lse=True)
    _report(f"ragged-k{Sk}-bs{bs}-{'unsorted' if unsorted else 'sorted'}-{'kv' if with_key_valid else 'nokv'}",
            check_against_reference(q, k, v, mask, D**-0.5, out, lse))  # fmt: skip


@pytest.mark.parametrize("Sk,bs", RAGGED_KEY_VALID, ids=[f"k{k}-bs{b}" for k, b in RAGGED_KEY_VALID])
def test_fp32_ieee_variant_under_interpreter(Sk: int, bs: int):
    """The GPU's fp32 variant (IEEE dots: K/V staged through registers, so the bound mask stays on every loop
    tile instead of a peeled tail) run through the interpreter, with its 64x32 tiles, padding keys and reversed
    index lists."""
    from accel.attention_kernels import triton_block_sparse as tbs

    g = torch.Generator().manual_seed(7)
    B, H, Sq, D = 1, 2, 130, 64
    q, k, v = (torch.randn(B, S, H, D, generator=g) for S in (Sq, Sk, Sk))
    mask = _key_valid_mask(Sq, Sk, bs, seed=8, unsorted=True)
    constexprs, cfg = tbs.kernel_constexprs(torch.float32, D, bs, Sk, interpret=False, key_valid=True)
    assert constexprs["IEEE"] and not constexprs["UPCAST"] and cfg.block_n < bs
    out = torch.empty_like(q)
    lse = torch.empty(B, H, Sq, dtype=torch.float32)
    scale = D**-0.5
    key_valid = mask.key_valid.view(torch.uint8)
    args = tbs.kernel_args(q, k, v, out, lse, mask.kv_num_blocks, mask.kv_indices, scale, key_valid)
    tbs._bsa_fwd_kernel[(triton.cdiv(Sq, cfg.block_m), B * H)](*args, **constexprs)
    _report(f"fp32-ieee-k{Sk}-bs{bs}", check_against_reference(q, k, v, mask, scale, out, lse))


@pytest.mark.parametrize("scale", [-0.3, 0.0])
def test_nonpositive_scale(scale: float):
    """The kernel scales the unscaled row max, which needs scale > 0: the launcher folds a negative scale into q
    and runs scale 0 (uniform weights over the kept keys) as zero scores."""
    case = Case(1, 2, 130, 200, 64, 64, 0.5, mask_bh=(1, 2))
    q, k, v, mask = make_inputs(case, torch.float16, seed=4)
    out, lse = block_sparse_attention(q, k, v, mask, scale=scale, backend="triton", return_lse=True)
    _report(f"scale{scale:g}", check_against_reference(q, k, v, mask, scale, out, lse))


# ------------------------------------------------------------------------------------------------------------
# The custom op
# ------------------------------------------------------------------------------------------------------------
def _op_args(case: Case, dtype=torch.float16):
    q, k, v, mask = make_inputs(case, dtype)
    return (q, k, v, mask.kv_num_blocks, mask.kv_indices, mask.block_size, case.D**-0.5)


def test_fake_impl_shapes():
    from accel.attention_kernels import triton_block_sparse  # noqa: F401  (registers the op)
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = _op_args(Case(2, 3, 130, 300, 80, 64, 0.5, mask_bh=(1, 3)), torch.bfloat16)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        out, lse = torch.ops.accel.block_sparse_attention_fwd(*fake)
    assert out.shape == (2, 130, 3, 80) and out.dtype == torch.bfloat16
    assert lse.shape == (2, 3, 130) and lse.dtype == torch.float32


def test_opcheck():
    from accel.attention_kernels import triton_block_sparse  # noqa: F401

    args = _op_args(Case(1, 1, 100, 70, 64, 64, 1.0))
    torch.library.opcheck(
        torch.ops.accel.block_sparse_attention_fwd,
        args,
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"),
    )


def test_torch_compile_one_opaque_op():
    """Under torch.compile the kernel is one node of the graph (no graph break, no tracing into Triton)."""
    from torch._dynamo.testing import EagerAndRecordGraphs

    case = Case(1, 2, 100, 130, 64, 64, 0.6, mask_bh=(1, 2))
    q, k, v, mask = make_inputs(case, torch.float32)

    def fn(q, k, v):
        out, lse = block_sparse_attention(q, k, v, mask, backend="triton", return_lse=True)
        return out * 2, lse

    backend = EagerAndRecordGraphs()
    torch._dynamo.reset()
    out, lse = torch.compile(fn, backend=backend, fullgraph=True)(q, k, v)
    eager_out, eager_lse = fn(q, k, v)
    torch.testing.assert_close(out, eager_out, rtol=0, atol=0)
    torch.testing.assert_close(lse, eager_lse, rtol=0, atol=0)
    assert len(backend.graphs) == 1
    targets = [n.target for n in backend.graphs[0].graph.nodes if n.op == "call_function"]
    assert torch.ops.accel.block_sparse_attention_fwd.default in targets or any(
        "block_sparse_attention_fwd" in str(t) for t in targets
    )


# ------------------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------------------
def test_validation_errors(monkeypatch):
    from accel.attention_kernels import triton_block_sparse as tbs

    q, k, v, kv_num, kv_idx, bs, scale = _op_args(Case(1, 2, 100, 70, 64, 64, 1.0))
    op = torch.ops.accel.block_sparse_attention_fwd
    with pytest.raises(TypeError, match="int32"):
        op(q, k, v, kv_num.long(), kv_idx, bs, scale)
    with pytest.raises(ValueError, match="does not fit"):
        op(q, k[:, :10], v[:, :10], kv_num, kv_idx, bs, scale)
    with pytest.raises(ValueError, match="broadcast"):
        op(q, k, v, kv_num.expand(1, 3, -1), kv_idx.expand(1, 3, -1, -1), bs, scale)
    with pytest.raises(TypeError, match="share one of"):
        op(q, k.float(), v, kv_num, kv_idx, bs, scale)
    with pytest.raises(ValueError, match="head dim"):
        big = torch.zeros(1, 100, 2, 256, dtype=q.dtype, device=q.device)
        op(big, big[:, :70], big[:, :70], kv_num, kv_idx, bs, scale)
    with pytest.raises(ValueError, match="divide the mask block size"):
        tbs._launch(q, k, v, kv_num, kv_idx, bs, scale, config=tbs.KernelConfig(128, 64, 4, 1))
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="CUDA"):
            tbs._launch(q, k, v, kv_num, kv_idx, bs, scale)


def test_config_table():
    from accel.attention_kernels import triton_block_sparse as tbs

    for spec in tbs.launch_specializations((64, 72, 80, 88, 96, 128)):
        cfg, bs = spec["config"], spec["block_size"]
        assert bs % cfg.block_m == 0 and bs % cfg.block_n == 0
        assert cfg.block_m >= 16 and cfg.block_n >= 16 and cfg.num_warps in (1, 2, 4, 8)
    assert tbs.pick_config(128, torch.float16, 128, interpret=False) == tbs.KernelConfig(128, 64, 8, 3)
    assert tbs.pick_config(64, torch.float16, 16, interpret=False).block_m == 16
    assert tbs.pick_config(64, torch.float32, 128, interpret=True) == tbs.KernelConfig(64, 64, 4, 1)


# ------------------------------------------------------------------------------------------------------------
# GPU-only: production sizes (the interpreter would take minutes)
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("D", [64, 72, 80, 88, 96, 128])
@pytest.mark.parametrize("bs", [64, 128])
def test_gpu_production_sizes(dtype_name: str, D: int, bs: int):
    dtype = DTYPES[dtype_name]
    case = Case(2, 4, 2000, 3100, D, bs, 0.3, mask_bh=(2, 4), empty_q_blocks=(3,))
    q, k, v, mask = make_inputs(case, dtype, device="cuda")
    out, lse = block_sparse_attention(q, k, v, mask, backend="triton", return_lse=True)
    _report(f"gpu-{case.id}-{dtype_name}", check_against_reference(q, k, v, mask, D**-0.5, out, lse))
