"""Accelerated pipelines under torch.compile (tiny Wan, CPU): same output as eager, graph breaks counted with
dynamo's own counters, no recompilation per step.

Recompilations are counted as dynamo's captured graphs (``counters["stats"]``): a longer run must not add any.
(``counters["frames"]`` does grow per forward: dynamo re-enters the graph-less frames around the StepHook
boundary on each call, which compiles nothing.) Graph breaks are counted over the first call's compilation
(``counters["graph_break"]`` counts each break once per compiled frame); with no recompiles that is the number of
breaks per transformer forward. Most cases compile with ``backend="aot_eager"`` (dynamo's capture and the graph as
traced, without Inductor's codegen): the capture is what breaks and guards depend on. One case uses Inductor with
regional compilation, as the CLI does.
"""

import pytest
import torch
from torch._dynamo.utils import counters

import accel
from accel.cli.runner import compile_denoisers, uncompile_denoisers
from accel.testing import tiny_wan_pipeline
from tests.helpers import run

RADIAL = dict(block_size=16, min_speedup=0, dense_step_fraction=0.2, dense_layers=0)
TOL = 2e-5  # the same kernels run compiled and eager; only the surrounding graph's fusion differs


def _fresh(preset: str, **overrides):
    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    accel.accelerate(pipe, preset, **overrides)
    return pipe


def _breaks() -> dict[str, int]:
    return {k.split("\n")[0] + " | " + k.split("Explanation:")[-1][:120]: v for k, v in counters["graph_break"].items()}


@pytest.fixture(autouse=True)
def _reset_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_whole_model_radial_aot_eager_is_sparse_and_does_not_recompile_per_step():
    eager = _fresh("radial", backend="flex", **RADIAL)
    ref4, ref8 = run(eager, num_inference_steps=4), run(eager, num_inference_steps=8)
    accel.stats(eager, reset=True)
    run(eager, num_inference_steps=4)
    eager_stats = accel.stats(eager)

    pipe = _fresh("radial", backend="flex", **RADIAL)
    pipe.transformer = torch.compile(pipe.transformer, backend="aot_eager")
    out4 = run(pipe, num_inference_steps=4)
    breaks = _breaks()
    graphs4 = dict(counters["stats"])  # unique_graphs, calls_captured: what a recompile adds to
    # The one graph break: the StepHook, a deliberate compiler boundary (it resolves the step from Python state that
    # changes every step). None in the attention path: the routed call is one custom op.
    assert sum(breaks.values()) == 1, breaks
    assert "StepHook.new_forward" in next(iter(counters["graph_break"]))
    assert (out4 - ref4).abs().max() < TOL
    assert accel.stats(pipe) == eager_stats  # decided and counted at run time, as eagerly

    out8 = run(pipe, num_inference_steps=8)
    assert dict(counters["stats"]) == graphs4, "recompiled for a longer run"
    assert (out8 - ref8).abs().max() < TOL

    # aot_eager would run FlexAttention's eager path, which ignores index-built block masks: the output must be the
    # sparse one, not silently dense.
    dense = tiny_wan_pipeline()
    dense.set_progress_bar_config(disable=True)
    assert (run(dense, num_inference_steps=4) - out4).abs().max() > 1e-3


def test_regional_inductor_radial_gather_has_no_graph_breaks():
    eager = _fresh("radial", backend="gather", **RADIAL)
    ref = run(eager, num_inference_steps=3)

    pipe = _fresh("radial", backend="gather", **RADIAL)
    assert compile_denoisers(pipe) == ["transformer: regional"]
    out = run(pipe, num_inference_steps=3)
    assert _breaks() == {}
    assert (out - ref).abs().max() < TOL
    assert accel.stats(pipe)["sparse"] == accel.stats(eager)["sparse"] > 0
    graphs = counters["stats"]["unique_graphs"]
    run(pipe, num_inference_steps=5)
    # One compile per hooked block (dynamo guards each block's hooked attention forward by identity), none per step.
    assert counters["stats"]["unique_graphs"] == graphs == 2
    uncompile_denoisers(pipe)
    assert not any(getattr(m, "_compiled_call_impl", None) for m in pipe.transformer.modules())


def test_regional_taylorseer_breaks_only_at_the_cache_boundaries():
    eager = _fresh("taylorseer", threshold=None)
    ref = run(eager, num_inference_steps=6)

    pipe = _fresh("taylorseer", threshold=None)
    pipe.transformer.compile_repeated_blocks(backend="aot_eager")
    out = run(pipe, num_inference_steps=6)
    assert (out - ref).abs().max() < TOL
    assert accel.stats(pipe) == accel.stats(eager)
    # Each cached module is a compiler boundary (its decision and Taylor ladders are host-side state): one break
    # per cached module in each block's graph. 2 blocks x 3 cached modules (attn1, attn2, ffn).
    (reason,) = {k.split("function <function ")[1].split(" ")[0] for k in counters["graph_break"]}
    assert reason == "TaylorSeerHook.new_forward"
    assert sum(counters["graph_break"].values()) == 6
    graphs = dict(counters["stats"])
    run(pipe, num_inference_steps=9)
    assert dict(counters["stats"]) == graphs


def test_whole_model_rettention_aot_eager_matches_eager():
    eager = _fresh("rettention", block_size=16, min_speedup=0, dense_layers=0)
    ref = run(eager, num_inference_steps=5)
    pipe = _fresh("rettention", block_size=16, min_speedup=0, dense_layers=0)
    pipe.transformer = torch.compile(pipe.transformer, backend="aot_eager")
    out = run(pipe, num_inference_steps=5)
    assert (out - ref).abs().max() < TOL
    assert accel.stats(pipe) == accel.stats(eager)
    assert accel.stats(pipe).get("sparse", 0) > 0
    assert sum(counters["graph_break"].values()) == 1  # the StepHook boundary only


@pytest.mark.parametrize("preset", ["draft", "sparse-vdit"])
def test_whole_model_aot_eager_matches_eager_for_the_other_methods(preset, tmp_path):
    """Draft (a mask planned every call) and Sparse-vDiT (a per-head plan) compile like the others: each attention
    call is the one custom op, so the compiled output is the eager one and the only break is the StepHook."""
    from tests.integration.test_context_parallel import _plan

    kw = dict(RADIAL, backend="gather")
    if preset == "draft":
        kw.update(patch=(4, 4), sparsity=0.5)
    else:  # the plan's buckets fix the warm-up (step 0 dense)
        del kw["dense_step_fraction"]
        kw["plan"] = _plan(str(tmp_path / "plan.json"))
    eager = _fresh(preset, **kw)
    ref = run(eager)
    pipe = _fresh(preset, **kw)
    pipe.transformer = torch.compile(pipe.transformer, backend="aot_eager")
    out = run(pipe)
    assert (out - ref).abs().max() < TOL
    assert accel.stats(pipe) == accel.stats(eager) and accel.stats(pipe)["sparse"] > 0
    assert sum(counters["graph_break"].values()) == 1  # the StepHook boundary only
