"""TaylorSeer-style feature caching, host-neutral: the finite-difference ladder of one feature, the memory meter and
the fixed full-step schedule (the adaptive one: :mod:`accel.caches.adaptive`).

On full steps a cached feature refreshes a ladder of finite differences; on the other steps it is predicted from the
ladder. Differences are taken over sigma (default), timestep or step index (``distance``): flow-matching schedules
are not uniform in steps, so the same step gap means different sigma gaps over the run.

Hosts drive it: the diffusers hooks live in :mod:`accel.hosts.diffusers_cache`, ComfyUI's block patches in
:mod:`accel.hosts.comfy`. This package imports torch and ``accel``'s core only.
"""

from __future__ import annotations

import math

import torch


class TaylorLadder:
    """Finite-difference ladder of one feature trajectory (one tensor), TaylorSeer's rule over a chosen axis.

    On a full step at position ``x`` with value ``F``: ``d[0] = F`` and ``d[i+1] = (d[i] - d_prev[i]) / (x - x_prev)``;
    a prediction at ``y`` is ``sum_i d[i] / i! * (y - x)**i``. With ``distance="step"`` positions are step indices
    (the original TaylorSeer); with ``"sigma"`` / ``"timestep"`` they are the scheduler's actual values, so the
    expansion follows non-uniform schedules (an order-1 prediction is exact for features linear in sigma).
    """

    def __init__(self, order: int, distance: str, factor_dtype: torch.dtype | None):
        self.order = order
        self.distance = distance
        self.factor_dtype = factor_dtype
        self.factors: list[torch.Tensor] = []  # d[0] = last value, d[i] = i-th difference
        self.position: float | None = None  # position of the last full step

    def update(self, value: torch.Tensor, position: float, differences: bool = True) -> None:
        """Record a full step's value; ``differences=False`` restarts the ladder at ``value`` (TaylorSeer takes no
        differences during the early warm-up steps, see :meth:`CacheSchedule.takes_differences`)."""
        store = self.factor_dtype or value.dtype
        new = [value.detach().to(store)]
        gap = None if self.position is None else position - self.position
        if gap and differences:
            cur32 = value.detach().float()
            for i in range(min(len(self.factors), self.order)):
                cur32 = (cur32 - self.factors[i].float()) / gap
                new.append(cur32.to(store))
        self.factors = new
        self.position = position

    def predict(self, position: float, dtype: torch.dtype) -> torch.Tensor:
        x = position - self.position
        out = self.factors[0].float()
        for i in range(1, len(self.factors)):
            out = out + self.factors[i].float() * (x**i / math.factorial(i))
        return out.to(dtype)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.factors)


class MemoryMeter:
    """Bytes held by all ladders of one accelerated pipeline: current and peak."""

    def __init__(self):
        self.current = 0
        self.peak = 0

    def add(self, delta: int) -> None:
        self.current += delta
        self.peak = max(self.peak, self.current)


class CacheSchedule:
    """Which steps are computed in full: TaylorSeer's schedule, the final steps, and any step another component
    requires (``force_full``, e.g. sparse attention's dense warm-up).

    TaylorSeer's rule (fresh threshold ``N = interval``, first_enhance ``E = warmup_steps``): the first ``E`` steps,
    then every ``N``-th step counted from step ``E - 1``; for ``N = 5, E = 1`` over 50 steps that is 0, 5, ..., 45.
    """

    def __init__(self, interval: int, warmup_steps: int, final_full_steps: int, force_full=None):
        self.interval = interval
        self.warmup_steps = warmup_steps
        self.final_full_steps = final_full_steps
        self.force_full = force_full

    def forced(self, step_index: int, num_steps: int | None) -> bool:
        """Full whatever else decides: warm-up steps, final steps, and the steps ``force_full`` names."""
        if step_index < self.warmup_steps:
            return True
        if num_steps is not None and step_index >= num_steps - self.final_full_steps:
            return True
        return self.force_full is not None and bool(self.force_full(step_index, num_steps))

    def is_full(self, step_index: int, num_steps: int | None) -> bool:
        return self.forced(step_index, num_steps) or (step_index - (self.warmup_steps - 1)) % self.interval == 0

    adaptive = False

    def step_full(self, step) -> bool:
        """Whether the cached modules compute in this forward (a fixed schedule: the forward's own decision)."""
        return step.full

    def reset(self) -> None:
        """End of a generation (a fixed schedule keeps no state)."""

    def takes_differences(self, step_index: int) -> bool:
        """TaylorSeer's order rule: finite differences are only taken once the step is past ``E - 2``."""
        return step_index > self.warmup_steps - 2

    def full_steps(self, num_steps: int) -> list[int]:
        return [i for i in range(num_steps) if self.is_full(i, num_steps)]
