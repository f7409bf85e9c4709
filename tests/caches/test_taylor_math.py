"""The finite-difference ladder and the cache schedule, on synthetic trajectories."""

import math

import pytest
import torch
from accel.caches import CacheSchedule, TaylorLadder

NODES = [1.0, 0.93, 0.81]  # non-uniform, decreasing like flow-matching sigmas


def feed(order, values, distance="sigma", nodes=NODES):
    lad = TaylorLadder(order, distance, None)
    for s, v in zip(nodes, values, strict=True):
        lad.update(v, s)
    return lad


def test_order0_reuses_and_order1_is_exact_for_linear_in_sigma():
    base = torch.randn(4, 3)
    lin = [base * (0.3 - 1.2 * s) for s in NODES]
    assert torch.equal(feed(0, lin).predict(0.5, torch.float32), lin[-1])
    for target in (0.7, 0.5, 0.2):
        got = feed(1, lin).predict(target, torch.float32)
        assert torch.allclose(got, base * (0.3 - 1.2 * target), atol=1e-5)


def test_order2_follows_taylorseers_formula_over_sigma():
    f = lambda s: torch.tensor([math.exp(-2 * s) + 0.5 * math.sin(3 * s)])
    vals = [f(s) for s in NODES]
    g1, g2 = NODES[1] - NODES[0], NODES[2] - NODES[1]
    d1_old = (vals[1] - vals[0]) / g1
    d1 = (vals[2] - vals[1]) / g2
    d2 = (d1 - d1_old) / g2
    x = 0.75 - NODES[2]
    want = vals[2] + d1 * x + d2 * x**2 / 2
    assert torch.allclose(feed(2, vals).predict(0.75, torch.float32), want, atol=1e-6)


def test_order_behaves_as_expected_on_a_smooth_trajectory():
    f = lambda s: torch.tensor([math.exp(-2 * s) + 0.5 * math.sin(3 * s)])
    nodes = [1.0, 0.95, 0.9]
    errs = {
        o: abs(feed(o, [f(s) for s in nodes], nodes=nodes).predict(0.86, torch.float32) - f(0.86)).item()
        for o in (0, 1, 2)
    }
    assert errs[2] < errs[1] < errs[0]


def test_step_mode_is_taylorseers_expansion():
    # full steps at 0, 5, 10 (interval 5): d1 = (F1 - F0) / 5, d2 = (d1_new - d1_old) / 5, F + d1 k + d2 k^2 / 2
    vals = [torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([5.0])]
    lad = feed(2, vals, "step", nodes=[0.0, 5.0, 10.0])
    d1_old, d1 = (2.0 - 1.0) / 5, (5.0 - 2.0) / 5
    d2 = (d1 - d1_old) / 5
    assert lad.predict(13.0, torch.float32).item() == pytest.approx(5.0 + d1 * 3 + d2 * 9 / 2)


def test_ladder_fills_up_over_full_steps():
    lad = TaylorLadder(2, "sigma", None)
    lad.update(torch.ones(2), 1.0)
    assert len(lad.factors) == 1  # order 1 needs two full steps, order 2 three
    lad.update(torch.ones(2), 0.9)
    assert len(lad.factors) == 2
    lad.update(torch.ones(2), 0.8)
    assert len(lad.factors) == 3


def test_factor_dtype_storage_and_memory():
    lad = TaylorLadder(1, "sigma", torch.bfloat16)
    lad.update(torch.ones(8, 8), 1.0)
    lad.update(2 * torch.ones(8, 8), 0.9)
    assert all(t.dtype == torch.bfloat16 for t in lad.factors)
    assert lad.nbytes() == 2 * 64 * 2
    assert lad.predict(0.8, torch.float32).dtype == torch.float32


def taylorseer_full_steps(num_steps, fresh_threshold, first_enhance):
    """TaylorSeer's reference rule as its cal_type runs it (reference/caching-and-diffusers.md 1.2): full while
    ``step < first_enhance`` or when the counter of Taylor steps since the last full step reaches N - 1."""
    full, counter = [], 0
    for i in range(num_steps):
        if i < first_enhance or counter == fresh_threshold - 1:
            full.append(i)
            counter = 0
        else:
            counter += 1
    return full


def test_default_schedule_is_taylorseers_published_one():
    s = CacheSchedule(interval=5, warmup_steps=1, final_full_steps=0)  # TaylorSeer-Wan2.1: N=5, E=1
    assert s.full_steps(50) == list(range(0, 50, 5))  # 0, 5, ..., 45: 10 full steps
    for n, N, E in [(50, 5, 1), (50, 4, 3), (28, 6, 2), (12, 3, 0), (30, 1, 1)]:
        assert CacheSchedule(N, E, 0).full_steps(n) == taylorseer_full_steps(n, N, E), (n, N, E)


def test_schedule_and_forced_full_steps():
    s = CacheSchedule(interval=5, warmup_steps=1, final_full_steps=0)
    assert s.full_steps(12) == [0, 5, 10]
    s = CacheSchedule(interval=3, warmup_steps=2, final_full_steps=2)
    assert s.full_steps(12) == [0, 1, 4, 7, 10, 11]
    s = CacheSchedule(interval=5, warmup_steps=1, final_full_steps=0, force_full=lambda i, n: i < 3)
    assert s.full_steps(12) == [0, 1, 2, 5, 10]
    assert CacheSchedule(1, 0, 0).full_steps(4) == [0, 1, 2, 3]


def test_differences_start_past_first_enhance_minus_two():
    s = CacheSchedule(interval=5, warmup_steps=3, final_full_steps=0)
    assert [i for i in range(4) if s.takes_differences(i)] == [2, 3]
    assert all(CacheSchedule(5, 1, 0).takes_differences(i) for i in range(3))
    lad = TaylorLadder(2, "step", None)
    for i, v in enumerate([1.0, 2.0, 4.0]):
        lad.update(torch.tensor([v]), float(i), s.takes_differences(i))
    # steps 0 and 1 only restart the ladder; step 2 takes the first difference from step 1
    assert [f.item() for f in lad.factors] == [4.0, 2.0]
