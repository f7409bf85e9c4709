"""Ahead-of-time compile of every kernel variant the Triton launcher can pick, for A100 (sm_80) and H100 (sm_90).

No GPU is needed: ``triton.compile`` targets an explicit ``GPUTarget``. The tests check that each variant
compiles, that its shared memory fits the device, that ptxas reports no register spills, and that the software
pipeliner multi-buffers the K/V tiles of the main loop (read from the TTGIR: the leading dimension of the shared
memory buffers the loop's K and V copies land in); they print a table (``pytest -s``); with
``ACCEL_WRITE_RESULTS=1`` also write it to ``benchmarks/results/triton_aot_cpu.txt``.

Under ``TRITON_INTERPRET=1`` (set by conftest on CPU hosts) ``@triton.jit`` yields an interpreted function that
cannot be compiled, so the compile runs in a subprocess with the interpreter off: this file run as a script.
Triton's on-disk cache makes repeat runs fast; registers and spills come from re-running the bundled ptxas with
``-v`` on the generated PTX (Triton's own flags), which takes well under a second per variant.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "triton_aot_cpu.txt"
# Max dynamic shared memory per block (opt-in): A100 163 KiB, H100 227 KiB.
SMEM_LIMIT = {80: 166912, 90: 232448}
ARCH_NAME = {80: "sm_80 (A100)", 90: "sm_90 (H100)"}
LAUNCH_HEAD_DIMS = (64, 128)  # the padded head dims the config table is keyed on
PADDED_HEAD_DIMS = (72, 80, 88, 96)
# Issue 24: on H100 the main loop must keep at least three K/V tiles in flight (tensor-core variants).
MIN_KV_BUFFERS_SM90 = 3


# ------------------------------------------------------------------------------------------------------------
# The compile worker (a subprocess: `python test_triton_aot.py ARCH D1,D2,...`, one JSON line per variant)
# ------------------------------------------------------------------------------------------------------------
# A representative diffusers call: [B, S, H, D] contiguous, 24 heads, a mask broadcast over batch and heads.
EXAMPLE_BATCH, EXAMPLE_HEADS = 2, 24


def _signature(fn, spec, dtype_name):
    """Signature, constexprs and alignment attrs as the JIT would specialise them for a representative call.

    The non-constexpr arguments come from the launcher's own ``kernel_args`` on meta tensors, and are
    specialised the way Triton's JIT does: ints equal to 1 and ``None`` (the absent key-valid pointer) become
    constexprs, ints divisible by 16 and (assumed 16-byte aligned) pointers get ``tt.divisibility=16``.
    """
    import torch
    from accel.attention_kernels import triton_block_sparse as tbs

    dtype, bs, seq, d = spec["dtype"], spec["block_size"], spec["seq_k"], spec["head_dim"]
    nblk = -(-seq // bs)
    meta = dict(device="meta")
    q = torch.empty(EXAMPLE_BATCH, seq, EXAMPLE_HEADS, d, dtype=dtype, **meta)
    out = torch.empty_like(q)
    lse = torch.empty(EXAMPLE_BATCH, EXAMPLE_HEADS, seq, dtype=torch.float32, **meta)
    kv_num = torch.empty(1, 1, nblk, dtype=torch.int32, **meta)
    kv_idx = torch.empty(1, 1, nblk, nblk, dtype=torch.int32, **meta)
    # The launcher passes BlockMask.key_valid as its uint8 view, or None.
    key_valid = torch.empty(seq, dtype=torch.uint8, **meta) if spec["key_valid"] else None
    values = tbs.kernel_args(q, q, q, out, lse, kv_num, kv_idx, d**-0.5, key_valid)
    return jit_signature(fn, spec["constexprs"], values)


def jit_signature(fn, constexprs: dict, values: list):
    """``(signature, constexprs, attrs)`` for ``triton.compiler.ASTSource`` from a kernel's constexprs and the
    values of its other arguments, in order, specialised as Triton's JIT does (see ``_signature``)."""
    import torch

    params = [a for a in fn.arg_names if a not in constexprs]
    assert len(values) == len(params), (len(values), params)
    sig, attrs, constexprs = {}, {}, dict(constexprs)
    pointer_types = {
        torch.float16: "fp16",
        torch.bfloat16: "bf16",
        torch.float32: "fp32",
        torch.int32: "i32",
        torch.uint8: "u8",
    }
    for name, value in zip(params, values, strict=True):
        if value is None:
            constexprs[name] = None
        elif isinstance(value, torch.Tensor):
            sig[name] = "*" + pointer_types[value.dtype]
            attrs[(fn.arg_names.index(name),)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            sig[name] = "fp32"
        elif value == 1:
            constexprs[name] = 1
        else:
            sig[name] = "i32"
            if value % 16 == 0:
                attrs[(fn.arg_names.index(name),)] = [["tt.divisibility", 16]]
    for name in constexprs:
        sig[name] = "constexpr"
    sig = {name: sig[name] for name in fn.arg_names}
    return sig, constexprs, attrs


def _ptxas_usage(ptx: str, arch: int) -> dict:
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    ptxas = get_ptxas(arch).path
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        cmd = [
            ptxas,
            "-lineinfo",
            "-v",
            "--regAllocOptLevel=2",
            f"--gpu-name={sm_arch_from_capability(arch)}",
            str(src),
            "-o",
            str(Path(tmp) / "k.cubin"),
        ]
        log = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return dict(
        regs=int(regs.group(1)) if regs else -1,
        stack=int(spill.group(1)) if spill else -1,
        spill_stores=int(spill.group(2)) if spill else -1,
        spill_loads=int(spill.group(3)) if spill else -1,
    )


_BUFFER_ALLOC = re.compile(r"= ttg\.local_alloc : \(\) -> !ttg\.memdesc<(\d+)x(\d+)x(\d+)x(\w+),")
_TTGIR_ELEM = {"fp16": "f16", "bf16": "bf16", "fp32": "f32"}


def _first_loop_end(ttgir: str) -> int:
    """Offset just past the first ``scf.for`` region (the kernel's main loop), matched by braces; 0 if none."""
    start = ttgir.find("scf.for ")
    if start < 0:
        return 0
    # The op's line can hold braces of its own (result types such as #ttg.slice<{...}>); the region opens with
    # the "{" that ends the line.
    depth = 0
    for i in range(ttgir.index("{\n", start), len(ttgir)):
        if ttgir[i] == "{":
            depth += 1
        elif ttgir[i] == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError("unbalanced scf.for region in the TTGIR")


def kv_buffer_count(ttgir: str, block_d: int, block_n: int, dtype_name: str) -> int:
    """Shared-memory buffers the main loop's K and V tiles rotate through (the fewer of the two; 0 if none).

    The software pipeliner turns the loop's K/V loads into async copies into ``ttg.local_alloc`` buffers of shape
    ``[count, BLOCK_D, BLOCK_N]`` (K^T) and ``[count, BLOCK_N, BLOCK_D]`` (V), allocated ahead of the loop they
    serve (a later loop, such as the peeled key tail, gets its own after the main loop); ``count`` is how many
    tiles can be in flight. With the kept-block index loaded inside the iteration that uses it (it is then staged
    through shared memory and every iteration starts by waiting for all copies), Hopper gets 2, not 3.
    """
    elem = _TTGIR_ELEM[dtype_name]
    end = _first_loop_end(ttgir)
    counts = [
        int(m.group(1))
        for m in _BUFFER_ALLOC.finditer(ttgir)
        if m.start() < end and m.group(4) == elem and {int(m.group(2)), int(m.group(3))} == {block_d, block_n}
    ]
    return min(counts) if len(counts) >= 2 else 0


def expected_kv_buffers(row: dict) -> int:
    """The K/V buffer count a fully pipelined main loop gets from Triton 3.9 for the variant's ``num_stages``:
    ``num_stages`` on sm_90 for tensor-core dots (fp16/bf16), ``num_stages - 1`` otherwise (sm_80, and the fp32
    CUDA-core dots, whose ``num_stages=2`` config is single-buffered)."""
    if row["arch"] >= 90 and row["dtype"] != "fp32":
        return row["num_stages"]
    return row["num_stages"] - 1


def _compile_worker(archs: list[int], head_dims: tuple[int, ...]) -> None:
    import torch
    import triton
    from accel.attention_kernels import triton_block_sparse as tbs
    from triton.backends.compiler import GPUTarget

    names = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
    fn = tbs._bsa_fwd_kernel
    for arch in archs:
        for spec in tbs.launch_specializations(head_dims):
            if spec["key_valid"] and tuple(head_dims) != tuple(tbs.LAUNCH_PADDED_HEAD_DIMS):
                # The key-valid load does not interact with head-dim padding; the 64/128 run covers it (this
                # halves the slow D-masked compile).
                continue
            cfg = spec["config"]
            dtype_name = names[spec["dtype"]]
            sig, constexprs, attrs = _signature(fn, spec, dtype_name)
            row = dict(
                arch=arch,
                dtype=dtype_name,
                head_dim=spec["head_dim"],
                block_d=spec["block_d"],
                block_size=spec["block_size"],
                even_k=spec["even_k"],
                key_valid=spec["key_valid"],
                block_m=cfg.block_m,
                block_n=cfg.block_n,
                num_warps=cfg.num_warps,
                num_stages=cfg.num_stages,
            )
            t0 = time.perf_counter()
            try:
                src = triton.compiler.ASTSource(fn, sig, constexprs, attrs)
                kernel = triton.compile(
                    src,
                    target=GPUTarget("cuda", arch, 32),
                    options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
                )
                row.update(
                    ok=True,
                    shared=int(kernel.metadata.shared),
                    kv_buffers=kv_buffer_count(kernel.asm["ttgir"], spec["block_d"], cfg.block_n, dtype_name),
                    **_ptxas_usage(kernel.asm["ptx"], arch),
                )
            except Exception as exc:  # reported (and failed) by the test
                row.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:2000]}")
            row["seconds"] = round(time.perf_counter() - t0, 2)
            print(json.dumps(row), flush=True)


# ------------------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------------------
def _run_workers(archs: list[int], head_dims: tuple[int, ...]) -> list[dict]:
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    # One process per arch: the 2-core CI box compiles them in parallel.
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(arch), ",".join(map(str, head_dims))],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for arch in archs
    ]
    rows = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"AOT compile worker failed ({proc.returncode}):\n{err[-4000:]}")
        rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return rows


def _format(rows: list[dict]) -> str:
    head = (
        f"{'arch':<6} {'dtype':<5} {'D':>3} {'Dpad':>4} {'bs':>4} {'evenK':>5} {'keyV':>5} {'tile':>7} {'warps':>5} "
        f"{'stages':>6} {'kvbuf':>5} {'smem B':>7} {'smem%':>6} {'regs':>4} {'spill st/ld':>11} {'stack':>5} "
        f"{'sec':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        key = f"sm_{r['arch']:<3} {r['dtype']:<5} {r['head_dim']:>3} {r['block_d']:>4} {r['block_size']:>4} "
        if not r["ok"]:
            lines.append(key + f"FAILED {r['error']}")
            continue
        tile = f"{r['block_m']}x{r['block_n']}"
        spill = f"{r['spill_stores']}/{r['spill_loads']}"
        lines.append(
            key + f"{str(r['even_k']):>5} {str(r['key_valid']):>5} {tile:>7} {r['num_warps']:>5} {r['num_stages']:>6} "
            f"{r['kv_buffers']:>5} {r['shared']:>7} "
            f"{100 * r['shared'] / SMEM_LIMIT[r['arch']]:>5.1f}% {r['regs']:>4} {spill:>11} {r['stack']:>5} "
            f"{r['seconds']:>5.1f}"
        )
    return "\n".join(lines)


def _compile_and_report(head_dims: tuple[int, ...], title: str, mode: str) -> list[dict]:
    import triton

    t0 = time.perf_counter()
    rows = _run_workers([80, 90], head_dims)
    elapsed = time.perf_counter() - t0
    text = (
        f"# {title}: Triton {triton.__version__}, {len(rows)} variants, {elapsed:.1f} s wall "
        "(Triton's cache makes repeat runs fast)\n"
        f"# smem limit: sm_80 {SMEM_LIMIT[80]} B, sm_90 {SMEM_LIMIT[90]} B; regs and spill bytes from ptxas -v; "
        "kvbuf: shared-memory buffers the main loop's K/V copies rotate through (TTGIR)\n" + _format(rows) + "\n"
    )
    if os.environ.get("ACCEL_WRITE_RESULTS"):  # refresh the committed table on purpose, not on every test run
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open(mode) as f:
            f.write(text if mode == "w" else "\n" + text)
    print("\n" + text)
    return rows


def _check(rows: list[dict], arch: int, max_spill_bytes: int = 0) -> None:
    """Every variant compiled, fits shared memory, spills at most ``max_spill_bytes``, and (where Triton turns
    its K/V loads into async copies) multi-buffers K/V as deep as its ``num_stages`` allows."""
    rows = [r for r in rows if r["arch"] == arch]
    failed = [r for r in rows if not r["ok"]]
    assert not failed, _format(failed)
    over = [r for r in rows if r["shared"] > SMEM_LIMIT[arch]]
    assert not over, "shared memory over the device limit:\n" + _format(over)
    assert all(r["regs"] > 0 and r["spill_stores"] >= 0 for r in rows), "could not parse ptxas -v output"
    spilled = [r for r in rows if max(r["spill_stores"], r["spill_loads"]) > max_spill_bytes]
    assert not spilled, "register spills:\n" + _format(spilled)
    # Head dims 72 and 88 (d-masked loads in 8-element runs) get no async copies from Triton 3.9: their K/V go
    # through registers (kvbuf 0), which no loop restructuring changes; every other variant must be pipelined.
    piped = [r for r in rows if r["head_dim"] % 16 == 0]
    shallow = [r for r in piped if r["kv_buffers"] < expected_kv_buffers(r)]
    assert not shallow, "K/V not multi-buffered as deep as num_stages allows:\n" + _format(shallow)
    if arch >= 90:
        hopper = [r for r in piped if r["dtype"] != "fp32" and r["kv_buffers"] < MIN_KV_BUFFERS_SM90]
        assert not hopper, f"fewer than {MIN_KV_BUFFERS_SM90} K/V buffers on sm_90:\n" + _format(hopper)


@pytest.fixture(scope="module")
def aot_rows():
    pytest.importorskip("triton.backends.nvidia.compiler")
    return _compile_and_report(LAUNCH_HEAD_DIMS, "AOT compile of every launcher config (padded head dims 64, 128)", "w")


def test_every_launch_config_is_covered(aot_rows):
    from accel.attention_kernels import triton_block_sparse as tbs

    assert len(aot_rows) == 2 * len(tbs.launch_specializations())
    expected = {
        (d, h, b, e, kv)
        for d in ("fp16", "bf16", "fp32")
        for h in (64, 128)
        for b in (64, 128)
        for e in (False, True)
        for kv in (False, True)
    }
    for arch in (80, 90):
        rows = [r for r in aot_rows if r["arch"] == arch]
        assert {(r["dtype"], r["block_d"], r["block_size"], r["even_k"], r["key_valid"]) for r in rows} == expected
    # The table is keyed on the padded head dim: the padded dims (72..96) reuse the D=128 configs.
    for dtype in tbs.LAUNCH_DTYPES:
        for bs in tbs.LAUNCH_BLOCK_SIZES:
            configs = {tbs.pick_config(tbs.padded_head_dim(d), dtype, bs, False) for d in (72, 80, 88, 96, 128)}
            assert len(configs) == 1


@pytest.mark.parametrize("arch", [80, 90], ids=ARCH_NAME.get)
def test_compiles_fits_smem_no_spills(aot_rows, arch):
    _check(aot_rows, arch)


@pytest.mark.slow
def test_padded_head_dims_compile():
    """The D-masked variants (72, 80, 88, 96 pad to 128): separate compiles, same configs.

    sm_90 must not spill. On sm_80, ptxas (12.9) caps a few 8-warp D=80/96 variants at 128 registers to fit
    two CTAs per SM, and spilled 12-16 bytes there before the loop prefetched its block index (none since);
    that is its occupancy trade-off, not a config that does not fit, so up to 32 bytes stay tolerated there.
    """
    pytest.importorskip("triton.backends.nvidia.compiler")
    rows = _compile_and_report(PADDED_HEAD_DIMS, "AOT compile of the D-masked head dims 72, 80, 88, 96", "a")
    _check(rows, 90)
    _check(rows, 80, max_spill_bytes=32)


if __name__ == "__main__":
    _compile_worker([int(sys.argv[1])], tuple(int(d) for d in sys.argv[2].split(",")))
