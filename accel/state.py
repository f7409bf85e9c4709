"""The core's value types: one transformer forward (:class:`StepInfo`), one self-attention layer
(:class:`LayerKey`, :class:`LayerPlan`), and the counters (:class:`Stats`).

Hosts put the current step and layer in ContextVars, so concurrent pipelines, threads and re-entrant calls never
see each other's state, and code outside an accelerated transformer sees ``None`` (and falls through to the
original).
"""

from __future__ import annotations

from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from accel.attention_kernels import TokenLayout


class LayerKey(NamedTuple):
    """A self-attention layer, globally: the transformer (``"transformer"``, ``"transformer_2"``) and the layer's
    index over every block list of that transformer (Flux / HunyuanVideo number double-stream blocks first, then
    single-stream blocks). Per-layer state (Re-ttention, Sparse-vDiT plans) is keyed by it."""

    transformer: str
    index: int


@dataclass(frozen=True)
class StepInfo:
    """One transformer forward: where the denoising loop is and what the token grid looks like.

    ``full``: this step is computed in full (decided once per forward: the feature cache's schedule together with
    what the attention method requires, such as its dense warm-up and Re-ttention's recalibration steps).
    ``key_valid``: bool ``[B, S]`` marking real keys per batch item (padded text in joint attention), or None when
    every key is real.
    ``call``: inside one attention call (set by :func:`accel.core.attend`), which call of its layer's forward this is
    (``(ordinal,)``; Mochi's processor makes one call per batch item) and, when the core splits a batch by its key
    padding, the batch group (``(ordinal, group)``); per-call state (Re-ttention) is keyed by it.
    ``head_offset`` / ``num_heads``: inside one attention call (set by :func:`accel.core.attend`) that holds a subset
    of the model's heads (context parallelism: Ulysses hands each rank the full sequence and ``H / ranks`` heads), the
    global index of the call's first head and the model's head count; ``0`` / None when the call holds every head.
    Per-head state (Sparse-vDiT plans) is read at ``head_offset + local head``, and per-call decisions that depend on
    heads are taken over all ``num_heads``, so that every rank decides alike. Re-ttention's per-call state needs no
    offset: a rank always holds the same heads, and its rho / residual are of those heads.
    """

    step_index: int
    num_steps: int | None
    branch: str  # diffusers cache_context name: "cond", "uncond", "cond_uncond", or "default"
    layout: TokenLayout
    timestep: float | None = None
    sigma: float | None = None
    transformer: str = "transformer"
    full: bool = True
    key_valid: torch.Tensor | None = None
    call: tuple[int, ...] = ()
    head_offset: int = 0
    num_heads: int | None = None

    def position(self, distance: str = "sigma") -> float:
        """Where this step sits on the denoising axis, for finite differences: sigma, timestep or step index."""
        if distance == "sigma" and self.sigma is not None:
            return float(self.sigma)
        if distance in ("sigma", "timestep") and self.timestep is not None:
            return float(self.timestep) / 1000.0  # same orientation as sigma; the scale cancels out
        return float(self.step_index)


@dataclass(frozen=True)
class LayerPlan:
    """The attention method serving one self-attention module; ``calls`` counts the attention calls of the
    module's current forward (hosts hand :meth:`for_forward` copies to each forward)."""

    layer: LayerKey
    method: Any  # an accel.methods.AttentionMethod
    stats: Stats
    calls: list[int] = field(default_factory=lambda: [0], compare=False, repr=False)

    def for_forward(self) -> LayerPlan:
        """This plan with its call count at zero, for one forward of the module."""
        return LayerPlan(self.layer, self.method, self.stats)

    def next_call(self) -> int:
        """The ordinal of a new attention call in this forward."""
        self.calls[0] += 1
        return self.calls[0] - 1


@dataclass
class Stats:
    """Counts of what happened to attention calls, by outcome and reason (for tests, CLI and benchmarks)."""

    counts: Counter = field(default_factory=Counter)
    density_sum: float = 0.0
    # The efficiency tables the never-slower decisions read (key -> source, values, by_tokens; methods.efficiency).
    tables: dict[str, dict] = field(default_factory=dict)
    # Adaptive caching: the steps each "transformer/branch" computed in full and predicted, in decision order.
    cache_steps: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    def cache_step(self, branch: str, step: int, full: bool) -> None:
        """Log one adaptive cache decision (reported as ``cache_steps`` and counted as ``cache:full_steps`` /
        ``cache:predicted_steps``)."""
        self.cache_steps.setdefault(branch, {"full": [], "predicted": []})["full" if full else "predicted"].append(step)

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
        if self.tables:
            d["efficiency"] = {k: dict(v) for k, v in self.tables.items()}
        if self.cache_steps:
            d["cache_steps"] = {k: {n: list(v) for n, v in s.items()} for k, s in self.cache_steps.items()}
            for kind in ("full", "predicted"):
                count = sum(len(s[kind]) for s in self.cache_steps.values())
                if count:
                    d[f"cache:{kind}_steps"] = count
        return d

    def reset(self) -> None:
        self.counts.clear()
        self.density_sum = 0.0
        self.tables.clear()
        self.cache_steps.clear()


CURRENT_STEP: ContextVar[StepInfo | None] = ContextVar("accel_current_step", default=None)
CURRENT_LAYER: ContextVar[LayerPlan | None] = ContextVar("accel_current_layer", default=None)
