"""Sparse attention and TaylorSeer under diffusers' context parallelism: 2 processes on gloo (CPU), tiny Wan.

Every case renders the shared tiny call (80 tokens, 2 heads, 2 layers) once in this process and once with the
transformer split over 2 ranks, and the split output must equal the single-process accelerated output: under
Ulysses each rank runs the method on the full sequence with one head (its global index picks the Sparse-vDiT
pattern), under Ring every accelerated call is the original dense attention (``fallback:ring``). Counters are per
rank: each rank makes every attention call of the model, so they equal the single-process counts.

One ``torch.multiprocessing`` spawn runs every case (process start-up is most of the cost).
"""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.multiprocessing as mp
from accel.attention_kernels import TokenLayout
from accel.attention_kernels.sparse_vdit import HeadPattern

import accel
from accel.hosts import diffusers_internals as di
from accel.testing import tiny_wan_pipeline
from tests.helpers import run

WORLD = 2
SMALL = dict(block_size=16, min_speedup=0, backend="gather", dense_step_fraction=0.2, dense_layers=0)

# name -> (preset, overrides, order). "cp_first": enable_parallelism, then accelerate (our hooks outermost; the
# lite cache hook must still go below the CP split of blocks.0); "accel_first": the other order.
CASES = {
    "radial": ("radial", SMALL, "cp_first"),
    "radial_accel_first": ("radial", SMALL, "accel_first"),
    "sparse_vdit": ("sparse-vdit", SMALL, "cp_first"),  # plan=... added at run time
    "rettention": ("rettention", SMALL, "cp_first"),
    "draft": ("draft", {**SMALL, "patch": (4, 4), "sparsity": 0.5}, "cp_first"),
    "radial_taylorseer": ("radial+taylorseer", {**SMALL, "interval": 3, "threshold": None}, "accel_first"),
    "radial_taylorseer_lite": (
        "radial+taylorseer",
        {**SMALL, "interval": 3, "lite": True, "threshold": None},
        "cp_first",
    ),  # fmt: skip
    # adaptive: each rank probes its shard, the signal is summed over ranks, so both decide as one process does
    "radial_taylorseer_adaptive": (
        "radial+taylorseer",
        {**SMALL, "threshold": 0.11, "warmup_steps": 1, "interval": 10},
        "cp_first",
    ),  # fmt: skip
}


def _plan(path: str) -> str:
    """A Sparse-vDiT plan whose two heads differ (a diagonal and a stripe): rank 1 must run head 1's pattern."""
    from accel.pipelines import spec_for_transformer

    from accel.methods.sparse_vdit import Plan

    transformer = tiny_wan_pipeline().transformer
    key = spec_for_transformer(transformer).architecture_key(transformer)
    heads = (HeadPattern("diagonal", 0), HeadPattern("stripe", 0, (0,)))
    Plan(
        models={"transformer": key},
        layout=TokenLayout(5, 4, 4),
        num_steps=6,
        block_size=16,
        buckets=[(1, 6)],
        patterns={"transformer": {0: [heads], 1: [heads]}},
    ).save(path)
    return path


def _overrides(name: str, plan: str) -> dict:
    preset, overrides, _ = CASES[name]
    return {**overrides, "plan": plan} if preset == "sparse-vdit" else dict(overrides)


def _cpu_lse_forward_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                        enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):  # fmt: skip
    """diffusers' native CP forward op with the log-sum-exp Ring needs, on CPU (diffusers' LSE ops are CUDA-only):
    q/k/v ``[B, S, H, D]`` -> out ``[B, S, H, D]`` (and lse ``[B, S, H]``)."""
    q, k, v = (x.permute(0, 2, 1, 3) for x in (query, key, value))
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, is_causal, scale=scale)
    out = out.permute(0, 2, 1, 3)
    return (out, lse.permute(0, 2, 1)) if return_lse else out


def _worker(rank: int, init_file: str, out_dir: str, plan: str) -> None:
    torch.set_num_threads(1)  # two ranks on the 2-core machine
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    results, times = {}, {}
    try:
        for name, (preset, _, order) in CASES.items():
            t0 = time.perf_counter()
            pipe = tiny_wan_pipeline()
            if order == "cp_first":
                di.enable_context_parallel(pipe.transformer, ulysses_degree=WORLD)
            accel.accelerate(pipe, preset, **_overrides(name, plan))
            if order == "accel_first":
                di.enable_context_parallel(pipe.transformer, ulysses_degree=WORLD)
            results[name] = (run(pipe), accel.stats(pipe))
            times[name] = time.perf_counter() - t0
        # Ring: the native backend's forward op gets an LSE on CPU (the built-in ones are CUDA-only).
        from diffusers.models import attention_dispatch

        attention_dispatch._native_attention_forward_op = _cpu_lse_forward_op
        t0 = time.perf_counter()
        pipe = tiny_wan_pipeline()
        di.enable_context_parallel(pipe.transformer, ring_degree=WORLD)
        accel.accelerate(pipe, "radial", **SMALL)
        results["ring"] = (run(pipe), accel.stats(pipe))
        times["ring"] = time.perf_counter() - t0
        torch.save({"results": results, "times": times}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def split_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cp")
    plan = _plan(str(tmp / "plan.json"))
    t0 = time.perf_counter()
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp), plan), nprocs=WORLD, join=True)
    elapsed = time.perf_counter() - t0
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    print(f"\ncontext-parallel spawn (2 ranks, {len(CASES) + 1} pipelines each): {elapsed:.1f} s; per case on rank 0: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in ranks[0]["times"].items()))  # fmt: skip
    return [r["results"] for r in ranks], plan


def _single(name: str, plan: str):
    preset, _, _ = CASES[name]
    pipe = tiny_wan_pipeline()
    accel.accelerate(pipe, preset, **_overrides(name, plan))
    return run(pipe), accel.stats(pipe)


def _close(a, b):
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_ulysses_equals_single_process(split_runs, name):
    ranks, plan = split_runs
    ref, ref_stats = _single(name, plan)
    dense = run(tiny_wan_pipeline())
    for out, stats in (r[name] for r in ranks):
        _close(out, ref)  # every rank holds the gathered output
        assert stats.get("fallback", 0) == 0, stats
        assert stats.get("sparse", 0) == ref_stats["sparse"] > 0
        for key in ("dense", "cache:computed", "cache:predicted", "skipped_heads", "cache_steps"):
            assert stats.get(key, 0) == ref_stats.get(key, 0), (key, stats, ref_stats)
    if name.endswith("adaptive"):  # the decisions went both ways
        assert ref_stats["cache:full_steps"] > 2 and ref_stats["cache:predicted_steps"] > 0, ref_stats
    assert not torch.allclose(ref, dense, atol=1e-4)  # the sparse steps changed the output


def test_sparse_vdit_heads_differ_so_the_equality_checks_global_indices(split_runs):
    """Had rank 1 read its pattern at its local index (0), it would run head 0's pattern on head 1: that output is
    measurably different from the reference the split run equals (test above)."""
    _, plan = split_runs
    ref, _ = _single("sparse_vdit", plan)
    from accel.methods.sparse_vdit import Plan

    same = Plan.load(plan)
    heads = same.patterns["transformer"][0][0]
    same.patterns = {"transformer": {0: [(heads[0], heads[0])], 1: [(heads[0], heads[0])]}}
    wrong = same.save(plan + ".same.json")
    other, _ = _single_with_plan(str(wrong))
    assert not torch.allclose(other, ref, atol=1e-4)


def _single_with_plan(path):
    pipe = tiny_wan_pipeline()
    accel.accelerate(pipe, "sparse-vdit", **SMALL, plan=path)
    return run(pipe), accel.stats(pipe)


def test_ring_falls_back_to_dense_counted(split_runs):
    ranks, _ = split_runs
    dense = run(tiny_wan_pipeline())
    for out, stats in (r["ring"] for r in ranks):
        # 6 steps x 2 guidance branches x 2 layers: every self-attention call is the original ring attention.
        assert stats["fallback:ring"] == stats["fallback"] == 24
        assert stats.get("sparse", 0) == 0
        _close(out, dense)
