"""Per-call runtime state: which denoising step and which attention layer is running.

Both travel through ContextVars, so concurrent pipelines, threads and re-entrant calls never see each other's
state, and code outside an accelerated transformer sees ``None`` (and falls through to the original).
"""

from __future__ import annotations

from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from accel.attention_kernels import TokenLayout


@dataclass(frozen=True)
class StepInfo:
    """One transformer forward: where the denoising loop is and what the token grid looks like."""

    step_index: int
    num_steps: int | None
    branch: str  # diffusers cache_context name: "cond", "uncond", "cond_uncond", or "default"
    layout: TokenLayout
    timestep: float | None = None
    sigma: float | None = None
    transformer: str = "transformer"

    def position(self, distance: str = "sigma") -> float:
        """Where this step sits on the denoising axis, for finite differences: sigma, timestep or step index."""
        if distance == "sigma" and self.sigma is not None:
            return float(self.sigma)
        if distance in ("sigma", "timestep") and self.timestep is not None:
            return float(self.timestep) / 1000.0  # same orientation as sigma; the scale cancels out
        return float(self.step_index)


@dataclass(frozen=True)
class LayerPlan:
    """The attention method serving one self-attention module."""

    layer_index: int
    method: Any  # an attention method object with .attend(q, k, v, step, layer_index, scale)
    stats: Stats


@dataclass
class Stats:
    """Counts of what happened to attention calls, by outcome and reason (for tests, CLI and benchmarks)."""

    counts: Counter = field(default_factory=Counter)
    density_sum: float = 0.0

    def add(self, outcome: str, reason: str = "", density: float | None = None) -> None:
        self.counts[outcome] += 1
        if reason:
            self.counts[f"{outcome}:{reason}"] += 1
        if density is not None:
            self.density_sum += density

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.counts)
        sparse = self.counts.get("sparse", 0)
        d["mean_sparse_density"] = self.density_sum / sparse if sparse else None
        return d

    def reset(self) -> None:
        self.counts.clear()
        self.density_sum = 0.0


CURRENT_STEP: ContextVar[StepInfo | None] = ContextVar("accel_current_step", default=None)
CURRENT_LAYER: ContextVar[LayerPlan | None] = ContextVar("accel_current_layer", default=None)
