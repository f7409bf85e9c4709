"""TaylorSeer in ComfyUI: the feature cache driven through ComfyUI's block replace patches (the host-neutral
ladders and schedules are :mod:`accel.caches`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..caches import TaylorLadder, cache_schedule
from ..config import torch_dtype
from ..errors import ConfigError
from ..state import StepInfo

# ----------------------------------------------------------------------------------------------------------------
# TaylorSeer through block replace patches


class BlockCache:
    """TaylorSeer on ComfyUI's DiT blocks, through ``patches_replace["dit"]``.

    ComfyUI's patch points are whole blocks (``("double_block", i)``, ``("single_block", i)``), so each block's
    residual, ``output - input`` for every stream it returns (Wan ``img``; Flux / HunyuanVideo double blocks ``img``
    and ``txt``; single blocks the joint ``img``), is the feature whose Taylor ladder is kept
    (:class:`accel.caches.taylorseer.TaylorLadder`, the schedule :class:`~accel.caches.taylorseer.CacheSchedule`).
    On full steps the block runs and refreshes its ladders; on the other steps it does not run and returns its input
    plus the predicted residual. State is per (branch, block) and per sampling run.
    """

    def __init__(self, host, cfg, force_full, current_forward: Callable[[], Any]):
        if cfg.lite:
            raise ConfigError("TaylorSeer lite mode is not available in ComfyUI yet; use lite=False")
        self.host = host  # the ComfyHost: its counters, and which forwards are its own
        self.current_forward = current_forward  # the running forward's state (host, step, block), or None
        self.cfg = cfg
        self.schedule = cache_schedule(cfg, force_full=force_full, record=host.stats.cache_step)
        self.factor_dtype = torch_dtype(cfg.factor_dtype)
        self.states: dict[tuple, dict] = {}
        self.probe_input: torch.Tensor | None = None  # adaptive schedule: the first block's img input

    def reset(self) -> None:
        self.states.clear()
        self.schedule.reset()
        self.probe_input = None

    def memory(self) -> int:
        return sum(lad.nbytes() for st in self.states.values() for lad in st["ladders"].values())

    def patch(self, kind: str, index: int, layer: int, previous=None):
        """The replace patch of block ``(kind, index)`` (global layer ``layer``), chained to ``previous``."""

        def replace(args: dict, extra: dict) -> dict:
            def run():
                return previous(args, extra) if previous is not None else extra["original_block"](args)

            fwd = self.current_forward()
            if fwd is None or fwd.host is not self.host:
                return run()
            fwd.block = layer
            try:
                if self.schedule.adaptive and layer < self.schedule.probe_blocks:
                    return self._probe(fwd.step, layer, args, run)
                return self._block(fwd.step, (kind, index), args, run)
            finally:
                fwd.block = None

        return replace

    def _probe(self, step: StepInfo, layer: int, args: dict, run) -> dict:
        """Adaptive schedule: a probe block always runs; the last one hands the residual of the ``img`` stream over
        the probe blocks to the schedule, which decides the rest of this step."""
        if layer == 0:
            img = args.get("img")
            self.probe_input = img.clone() if isinstance(img, torch.Tensor) else None  # blocks add in place
        out = run()
        if layer == self.schedule.probe_blocks - 1 and self.probe_input is not None:
            x, self.probe_input = self.probe_input, None
            img = out.get("img")
            if isinstance(img, torch.Tensor) and img.shape == x.shape:
                self.schedule.decide(step, img - x)
        return out

    def _block(self, step: StepInfo, block, args: dict, run) -> dict:
        key = (step.branch, block)
        st = self.states.get(key)
        if st is not None and st["step"] is not None and step.step_index < st["step"]:
            st = None  # a new run in the same state (sampling driven without OUTER_SAMPLE)
        shapes = {n: tuple(t.shape) for n, t in args.items() if isinstance(t, torch.Tensor) and n in ("img", "txt")}
        if self.schedule.step_full(step) or st is None or st["shapes"] != shapes:
            # ComfyUI's Flux / HunyuanVideo blocks add to their txt (double) and img (single) inputs in place: keep
            # the inputs, or the residual would read zero.
            inputs = {n: args[n].clone() for n in shapes}
            out = run()
            self.host.stats.add("cache:computed")
            if st is not None and st["shapes"] == shapes and st["step"] == step.step_index:
                # A second call in the same step (Heun's correction, dpmpp_2s / dpmpp_sde stages): the step's
                # first value stays on the ladder (a zero gap would drop its differences).
                return out
            if st is None or st["shapes"] != shapes:
                st = self.states[key] = {"ladders": {}, "shapes": shapes, "step": None}
            pos = step.position(self.cfg.distance)
            diffs = self.schedule.takes_differences(step.step_index)
            for name, value in out.items():
                if name in shapes and isinstance(value, torch.Tensor) and tuple(value.shape) == shapes[name]:
                    lad = st["ladders"].setdefault(name, TaylorLadder(self.cfg.order, self.cfg.distance,
                                                                      self.factor_dtype))  # fmt: skip
                    lad.update(value - inputs[name], pos, diffs)
            st["step"] = step.step_index
            return out
        st["step"] = step.step_index
        self.host.stats.add("cache:predicted")
        pos = step.position(self.cfg.distance)
        out = dict(args)
        for name, lad in st["ladders"].items():
            out[name] = args[name] + lad.predict(pos, args[name].dtype)
        return {n: out[n] for n in st["ladders"]}
