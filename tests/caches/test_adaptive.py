"""The adaptive cache schedule (``threshold=``): decisions against a brute-force oracle, then on a tiny Wan pipeline.

The oracle recomputes each signal from the probe values alone: ``change`` is the relative L1 distance to the probe
at the last full step; ``forecast`` is the relative L1 error of the order-1 expansion over sigma from the last two
full steps (a straight line through them).
"""

from __future__ import annotations

import pytest
import torch
from accel.attention_kernels import TokenLayout
from accel.caches import AdaptiveSchedule, cache_schedule

import accel
from accel.config import ConfigError, TaylorSeerConfig
from accel.state import Stats, StepInfo
from accel.testing import tiny_wan_pipeline
from tests.helpers import run

LAYOUT = TokenLayout(1, 2, 2)
STEPS = 12
SIGMAS = [1.0 - i / STEPS for i in range(STEPS)]


def _cfg(**kw) -> TaylorSeerConfig:
    base = dict(threshold=0.1, interval=4, warmup_steps=2, order=1, final_full_steps=0)
    return TaylorSeerConfig(**{**base, **kw}).with_defaults({})


def _step(i: int, branch: str = "cond", full: bool = False) -> StepInfo:
    return StepInfo(i, STEPS, branch, LAYOUT, sigma=SIGMAS[i], full=full)


def _probes(seed: int = 0) -> list[torch.Tensor]:
    """A probe trajectory that moves smoothly in some stretches and jumps in others."""
    g = torch.Generator().manual_seed(seed)
    base, slope = torch.randn(1, 8, 4, generator=g), torch.randn(1, 8, 4, generator=g)
    jumps = {5: 0.6, 9: 0.4}
    out, x = [], base
    for i in range(STEPS):
        x = base + slope * SIGMAS[i] + sum(torch.randn(1, 8, 4, generator=g) * a for s, a in jumps.items() if i >= s)
        out.append(x)
    return out


def _oracle(cfg: TaylorSeerConfig, probes, forced=()) -> list[bool]:
    full_at: list[int] = []
    decisions = []
    for i, p in enumerate(probes):
        run = i - full_at[-1] - 1 if full_at else 0
        if i < cfg.warmup_steps or i in forced or not full_at or run >= cfg.interval - 1:
            full = True
        else:
            last = probes[full_at[-1]]
            if cfg.signal == "change":
                err = (p - last).abs().sum() / last.abs().sum()
            else:
                pred = last
                if len(full_at) >= 2 and full_at[-1] > cfg.warmup_steps - 2:
                    j = full_at[-2]
                    slope = (last - probes[j]) / (SIGMAS[full_at[-1]] - SIGMAS[j])
                    pred = last + slope * (SIGMAS[i] - SIGMAS[full_at[-1]])
                err = (p - pred).abs().sum() / p.abs().sum()
            full = float(err) > cfg.threshold
        if full:
            full_at.append(i)
        decisions.append(full)
    return decisions


@pytest.mark.parametrize("signal", ["forecast", "change"])
@pytest.mark.parametrize("threshold", [0.05, 0.2, 0.5])
def test_decisions_match_the_oracle(signal, threshold):
    cfg = _cfg(signal=signal, threshold=threshold)
    probes = _probes()
    s = cache_schedule(cfg)
    got = [s.decide(_step(i, full=s.is_full(i, STEPS)), p) for i, p in enumerate(probes)]
    assert got == _oracle(cfg, probes)
    assert got[:2] == [True, True]  # warm-up


def test_thresholds_span_every_step_full_to_the_interval_cap():
    probes = _probes()
    always = cache_schedule(_cfg(threshold=0.0))
    assert all(always.decide(_step(i, full=always.is_full(i, STEPS)), p) for i, p in enumerate(probes))
    never = cache_schedule(_cfg(threshold=1e9, interval=4))
    got = [never.decide(_step(i, full=never.is_full(i, STEPS)), p) for i, p in enumerate(probes)]
    fixed = cache_schedule(_cfg(threshold=None, interval=4))
    assert [i for i, f in enumerate(got) if f] == fixed.full_steps(STEPS)  # the cap is the fixed schedule
    assert isinstance(never, AdaptiveSchedule) and not isinstance(fixed, AdaptiveSchedule)


def test_forced_and_final_steps_are_full_and_reset_the_run():
    cfg = _cfg(threshold=1e9, final_full_steps=2)
    forced = {6}
    s = cache_schedule(cfg, force_full=lambda i, n: i in forced)
    assert [i for i in range(STEPS) if s.is_full(i, STEPS)] == [0, 1, 6, 10, 11]
    probes = _probes()
    got = [s.decide(_step(i, full=s.is_full(i, STEPS)), p) for i, p in enumerate(probes)]
    assert [i for i, f in enumerate(got) if f] == [0, 1, 5, 6, 10, 11]
    assert got == _oracle(cfg, probes, forced={6, 10, 11})


def test_branches_decide_apart_a_repeat_keeps_its_decision_and_records_are_counted():
    stats = Stats()
    s = cache_schedule(_cfg(threshold=0.1), record=stats.cache_step)
    a, b = _probes(0), _probes(1)
    for i in range(STEPS):
        for branch, probes in (("cond", a), ("uncond", b)):
            step = _step(i, branch, full=s.is_full(i, STEPS))
            first = s.decide(step, probes[i])
            assert s.decide(step, probes[i] * 100) == first  # a second forward of the step (Heun): same decision
            assert s.step_full(step) == first
    cfg = _cfg(threshold=0.1)
    d = stats.as_dict()
    for branch, probes in (("cond", a), ("uncond", b)):
        want = _oracle(cfg, probes)
        assert d["cache_steps"][f"transformer/{branch}"]["full"] == [i for i, f in enumerate(want) if f]
    assert d["cache:full_steps"] + d["cache:predicted_steps"] == 2 * STEPS


def test_a_new_generation_starts_over():
    s = cache_schedule(_cfg(threshold=1e9))
    probes = _probes()
    first = [s.decide(_step(i, full=s.is_full(i, STEPS)), p) for i, p in enumerate(probes)]
    again = [s.decide(_step(i, full=s.is_full(i, STEPS)), p) for i, p in enumerate(probes)]
    assert first == again


def test_reduce_sums_the_signal_over_ranks():
    """Two ranks hold halves of the sequence; with ``reduce`` adding the other rank's sums, each decides as the
    whole sequence does."""
    cfg = _cfg(signal="change", threshold=0.3)
    probes = _probes()
    whole = cache_schedule(cfg)
    want = [whole.decide(_step(i, full=whole.is_full(i, STEPS)), p) for i, p in enumerate(probes)]
    halves = [[p[:, :4] for p in probes], [p[:, 4:] for p in probes]]
    # the other half's [|diff|, |ref|] sums at each step, from the same probes (what the all-reduce would add)
    ranks = [cache_schedule(cfg), cache_schedule(cfg)]
    for i in range(STEPS):
        other = {}
        for r in (0, 1):
            st = ranks[r].branches.get(("transformer", "cond"))
            last = None if st is None or not st.ladder.factors else st.ladder.factors[0]
            if last is not None:
                p = halves[r][i]
                other[r] = torch.stack([(p - last).abs().sum(), last.abs().sum()]).double()
        got = []
        for r in (0, 1):
            step = _step(i, full=ranks[r].is_full(i, STEPS))
            add = other.get(1 - r)  # None before the first full step: decide() then calls no reduce
            got.append(ranks[r].decide(step, halves[r][i], reduce=lambda t, add=add: t + add))
        assert got == [want[i], want[i]], i


def test_config_checks():
    with pytest.raises(ConfigError, match="threshold"):
        TaylorSeerConfig(threshold=-1.0)
    with pytest.raises(ConfigError, match="signal"):
        TaylorSeerConfig(signal="residual")
    with pytest.raises(ConfigError, match="probe_blocks"):
        TaylorSeerConfig(probe_blocks=0)
    wan = {"interval": 5, "order": 1, "warmup_steps": 1, "adaptive": {"threshold": 0.2, "warmup_steps": 4}}
    assert TaylorSeerConfig().with_defaults(wan).threshold == 0.2
    assert TaylorSeerConfig().with_defaults(wan).warmup_steps == 4
    fixed = TaylorSeerConfig(threshold=None).with_defaults(wan)
    assert (fixed.threshold, fixed.warmup_steps, fixed.interval) == (None, 1, 5)  # today's published schedule
    assert TaylorSeerConfig().with_defaults({"interval": 6}).threshold is None  # no tuned value: fixed


# ---- on a tiny Wan pipeline (2 blocks: block 0 is the probe, block 1 is cached) -------------------------------


class ModuleRuns:
    """How often each block's attention and feed-forward really ran (forward hooks on their first linear)."""

    def __init__(self, transformer):
        self.runs = [0] * len(transformer.blocks)
        self.handles = []
        for i, block in enumerate(transformer.blocks):
            self.handles.append(block.attn1.to_q.register_forward_hook(lambda *_, i=i: self._hit(i)))

    def _hit(self, i):
        self.runs[i] += 1

    def close(self):
        for h in self.handles:
            h.remove()


def test_threshold_zero_is_the_uncached_pipeline_bit_for_bit():
    pipe = tiny_wan_pipeline()
    ref = run(pipe)
    accel.accelerate(pipe, "taylorseer", threshold=0.0, warmup_steps=1)
    try:
        out = run(pipe)
        s = accel.stats(pipe)
    finally:
        accel.disable(pipe)
    assert torch.equal(out, ref)
    assert s["cache:full_steps"] == 6 * 2 and "cache:predicted_steps" not in s
    assert torch.equal(run(pipe), ref)


def test_the_probe_block_always_runs_and_the_rest_follows_the_decisions():
    pipe = tiny_wan_pipeline()
    ref = run(pipe)
    counter = ModuleRuns(pipe.transformer)
    # forecast errors on this pipeline run 0.07-0.25 per step: 0.11 predicts some steps and computes others
    accel.accelerate(pipe, "taylorseer", threshold=0.11, warmup_steps=1, interval=10)
    try:
        out = run(pipe)
        s = accel.stats(pipe)
    finally:
        accel.disable(pipe)
        counter.close()
    steps = s["cache_steps"]
    full = {b: len(v["full"]) for b, v in steps.items()}
    predicted = {b: len(v["predicted"]) for b, v in steps.items()}
    assert set(steps) == {"transformer/cond", "transformer/uncond"}
    assert all(p > 0 for p in predicted.values()) and all(f > 1 for f in full.values())
    assert counter.runs[0] == 6 * 2  # the probe block: every step of both branches
    assert counter.runs[1] == sum(full.values())  # the cached block: full steps only
    # block 1's three modules computed on full steps, predicted on the others
    assert s["cache:computed"] == 3 * sum(full.values()) and s["cache:predicted"] == 3 * sum(predicted.values())
    assert not torch.equal(out, ref) and torch.isfinite(out).all()


def test_composes_with_radial_warmup_and_lite_mode():
    pipe = tiny_wan_pipeline()
    sparse = dict(block_size=16, min_speedup=0, backend="gather", dense_step_fraction=0.5, dense_layers=0)
    accel.accelerate(pipe, "radial+taylorseer", threshold=1e9, warmup_steps=1, interval=3, **sparse)
    try:
        run(pipe)
        s = accel.stats(pipe)
    finally:
        accel.disable(pipe)
    # radial keeps steps 0-2 dense, so they are full; then at most 2 predicted in a row: 3, 4 predicted, 5 full
    assert s["cache_steps"]["transformer/cond"] == {"full": [0, 1, 2, 5], "predicted": [3, 4]}
    accel.accelerate(pipe, "taylorseer", threshold=1e9, warmup_steps=1, interval=3, lite=True)
    try:
        out = run(pipe)
        s = accel.stats(pipe)
    finally:
        accel.disable(pipe)
    assert s["cache_steps"]["transformer/uncond"] == {"full": [0, 3], "predicted": [1, 2, 4, 5]}
    assert torch.isfinite(out).all()


def test_too_few_blocks_for_the_probe_is_refused():
    pipe = tiny_wan_pipeline()  # 2 blocks
    with pytest.raises(ConfigError, match="probe_blocks=2"):
        accel.accelerate(pipe, "taylorseer", threshold=0.1, probe_blocks=2)
    assert not accel.is_accelerated(pipe)
