"""The finite-difference ladder and the cache schedule, on synthetic trajectories."""

import math

import pytest
import torch
from accel.caches import CacheSchedule, TaylorLadder

NODES = [1.0, 0.93, 0.81, 0.62, 0.35]  # non-uniform, decreasing like flow-matching sigmas


def poly(coeffs, s):
    return sum(c * s**i for i, c in enumerate(coeffs))


@pytest.mark.parametrize("order", [0, 1, 2])
def test_newton_is_exact_for_polynomials_up_to_order(order):
    coeffs = [0.3, -1.2, 0.7][: order + 1]
    base = torch.randn(4, 3)
    lad = TaylorLadder(order, "sigma", None)
    for s in NODES[:3]:
        lad.update(base * poly(coeffs, s), s)
    for target in (0.7, 0.5, 0.2):
        got = lad.predict(target, torch.float32)
        assert torch.allclose(got, base * poly(coeffs, target), atol=1e-5)


def test_order_behaves_as_the_formula_says_on_a_smooth_trajectory():
    f = lambda s: torch.tensor([math.exp(-2 * s) + 0.5 * math.sin(3 * s)])
    errs = {}
    for order in (0, 1, 2):
        lad = TaylorLadder(order, "sigma", None)
        for s in NODES[:3]:
            lad.update(f(s), s)
        errs[order] = abs(lad.predict(0.75, torch.float32) - f(0.75)).item()
    # order 0 reuses F(0.81); order 1 adds the secant slope; order 2 the quadratic through three nodes
    assert errs[0] == pytest.approx(abs(f(0.81) - f(0.75)).item(), rel=1e-5)
    slope = (f(0.81) - f(0.93)) / (0.81 - 0.93)
    assert errs[1] == pytest.approx(abs(f(0.81) + slope * (0.75 - 0.81) - f(0.75)).item(), rel=1e-4)
    assert errs[2] < errs[1] < errs[0]


def test_step_mode_is_taylorseers_expansion():
    # full steps at 0, 5, 10 (interval 5); TaylorSeer: d1 = (F1 - F0) / 5, d2 = (d1_new - d1_old) / 5,
    # prediction k steps later: F + d1 k + d2 k^2 / 2
    vals = {0: torch.tensor([1.0]), 5: torch.tensor([2.0]), 10: torch.tensor([5.0])}
    lad = TaylorLadder(2, "step", None)
    for step, v in vals.items():
        lad.update(v, float(step))
    d1_old, d1 = (2.0 - 1.0) / 5, (5.0 - 2.0) / 5
    d2 = (d1 - d1_old) / 5
    k = 3
    want = 5.0 + d1 * k + d2 * k**2 / 2
    assert lad.predict(13.0, torch.float32).item() == pytest.approx(want)


def test_factor_dtype_storage_and_memory():
    lad = TaylorLadder(1, "sigma", torch.bfloat16)
    lad.update(torch.ones(8, 8), 1.0)
    lad.update(2 * torch.ones(8, 8), 0.9)
    assert all(t.dtype == torch.bfloat16 for t in lad.factors)
    assert lad.nbytes() == 2 * 64 * 2
    assert lad.predict(0.8, torch.float32).dtype == torch.float32


def test_schedule_and_forced_full_steps():
    s = CacheSchedule(interval=5, warmup_steps=1, final_full_steps=0)
    assert s.full_steps(12) == [0, 1, 6, 11]
    s = CacheSchedule(interval=3, warmup_steps=2, final_full_steps=2)
    assert s.full_steps(12) == [0, 1, 2, 5, 8, 10, 11]
    s = CacheSchedule(interval=5, warmup_steps=1, final_full_steps=0, force_full=lambda i, n: i < 3)
    assert s.full_steps(12) == [0, 1, 2, 6, 11]
    assert CacheSchedule(1, 0, 0).full_steps(4) == [0, 1, 2, 3]
