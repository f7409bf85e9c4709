"""Adaptive full-step decisions for the feature cache: a step runs in full when a cheap probe says the forecast drifts.

The probe is the residual of the first ``probe_blocks`` transformer blocks (output minus input of the stream they
carry, ``[B, S, C]``; under context parallelism the rank's shard), which run on every step. Per guidance branch the
probe's own Taylor ladder is kept over the full steps, exactly as the cached modules keep theirs. On a step that the
fixed part of the schedule leaves open (not a warm-up or final step, nor one the attention method requires), the
signal is compared with ``threshold``:

- ``"change"`` (default): ``|probe - probe at the last full step|_1 / |probe at the last full step|_1`` (the
  first-block residual test of FirstBlockCache / DBCache).
- ``"forecast"``: ``|probe - forecast|_1 / |probe|_1``, the relative error of the ladder's prediction of the probe at
  this step (forecast, then verify): how well the expansion from the last full step still holds.

Above the threshold the rest of the step runs in full and every ladder refreshes; at or below it the remaining cached
modules are predicted. At most ``interval - 1`` steps in a row are predicted.

Host-neutral (the diffusers hook on the probe blocks: :class:`accel.hosts.diffusers_cache.ProbeHook`; ComfyUI's:
``BlockCache._probe`` in :mod:`accel.hosts.comfy`): a host hands in the probe tensor and, under context
parallelism, ``reduce`` (a sum over the ranks of a small float64 tensor), so that every rank takes the same decision
from the whole sequence.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .taylorseer import CacheSchedule, TaylorLadder


class _BranchProbe:
    """One guidance branch: the probe's ladder and this generation's decisions."""

    def __init__(self, ladder: TaylorLadder):
        self.ladder = ladder  # factors[0]: the probe at the last full step
        self.predicted_run = 0  # predicted steps since the last full one
        self.step: int | None = None  # the step decided last, and its decision
        self.full = True


class AdaptiveSchedule(CacheSchedule):
    """A :class:`CacheSchedule` whose open steps are decided from the probe (:meth:`decide`), per branch.

    ``is_full(i, n)`` names only the steps that are full whatever the probe says (warm-up, final steps, steps the
    attention method requires); :meth:`step_full` is the decision a cached module reads inside a forward.
    ``record(branch, step, full)`` (optional) is told every decision, for the statistics.
    """

    def __init__(self, cfg, force_full=None, record: Callable[[str, int, bool], None] | None = None):
        super().__init__(cfg.interval, cfg.warmup_steps, cfg.final_full_steps, force_full=force_full)
        self.threshold = float(cfg.threshold)
        self.signal = cfg.signal
        self.probe_blocks = cfg.probe_blocks
        self.order = cfg.order
        self.distance = cfg.distance
        self.record = record
        self.branches: dict[tuple[str, str], _BranchProbe] = {}

    adaptive = True

    def is_full(self, step_index: int, num_steps: int | None) -> bool:
        return self.forced(step_index, num_steps)

    def reset(self) -> None:
        self.branches.clear()

    def _branch(self, step) -> _BranchProbe:
        key = (step.transformer, step.branch)
        st = self.branches.get(key)
        if st is None or (st.step is not None and step.step_index < st.step):
            # first use, or a new generation in the same branch (hosts without an end-of-call reset)
            st = self.branches[key] = _BranchProbe(TaylorLadder(self.order, self.distance, torch.float32))
        return st

    def step_full(self, step) -> bool:
        """Whether the cached modules compute in this forward: forced, or decided full by the probe of this step."""
        if step.full:
            return True
        st = self.branches.get((step.transformer, step.branch))
        return st is None or st.step != step.step_index or st.full

    def decide(self, step, probe: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """Decide this forward's step from ``probe`` and return whether it runs in full. A second forward of the
        same step (a two-stage sampler) keeps the step's first decision."""
        st = self._branch(step)
        if st.step == step.step_index:
            return st.full
        factors = st.ladder.factors
        if step.full or not factors or factors[0].shape != probe.shape or st.predicted_run >= self.interval - 1:
            full = True
        else:
            full = self._signal(st, step, probe, reduce) > self.threshold
        if full:
            st.ladder.update(probe.float(), step.position(self.distance), self.takes_differences(step.step_index))
            st.predicted_run = 0
        else:
            st.predicted_run += 1
        st.step, st.full = step.step_index, full
        if self.record is not None:
            self.record(f"{step.transformer}/{step.branch}", step.step_index, full)
        return full

    def _signal(self, st: _BranchProbe, step, probe: torch.Tensor, reduce) -> float:
        probe = probe.detach().float()
        if self.signal == "forecast":
            ref, err_ref = probe, st.ladder.predict(step.position(self.distance), torch.float32)
        else:
            ref = err_ref = st.ladder.factors[0].float()
        sums = torch.stack([(probe - err_ref).abs().sum(), ref.abs().sum()]).double()
        if reduce is not None:
            sums = reduce(sums)
        num, den = float(sums[0]), float(sums[1])
        return num / den if den > 0 else float("inf")


def cache_schedule(cfg, force_full=None, record=None) -> CacheSchedule:
    """The full-step schedule of ``cfg`` (a resolved TaylorSeerConfig): fixed, or adaptive when ``cfg.threshold``
    is set; ``force_full(i, n)`` names steps another component requires in full, ``record(branch, step, full)`` is
    told each adaptive decision."""
    if getattr(cfg, "threshold", None) is None:
        return CacheSchedule(cfg.interval, cfg.warmup_steps, cfg.final_full_steps, force_full=force_full)
    return AdaptiveSchedule(cfg, force_full=force_full, record=record)
