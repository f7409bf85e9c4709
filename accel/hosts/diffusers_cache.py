"""The feature cache on diffusers' ModelHook / HookRegistry / StateManager: which modules of a transformer it hooks
for a ModelSpec and config, and the hooks that run or predict them.

State lives in a diffusers ``StateManager``, one state per ``cache_context`` (cond / uncond), reset when the pipeline
call ends. The maths (ladders, schedules, adaptive decisions) is host-neutral, in :mod:`accel.caches`; the caller
injects where the current step comes from (``step_source``) and where to count events (``count``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from accel.caches import CacheSchedule, MemoryMeter, TaylorLadder

from accel.config import torch_dtype
from accel.errors import ConfigError, UnsupportedModelError

from .diffusers_internals import BaseState, ModelHook, StateManager


def _flatten(out) -> tuple[list[torch.Tensor], Callable[[list[torch.Tensor]], Any]]:
    """Tensors of a module output (a tensor or a tuple/list of tensors) and how to rebuild it."""
    if isinstance(out, torch.Tensor):
        return [out], lambda ts: ts[0]
    if isinstance(out, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in out):
        kind = type(out)
        return list(out), lambda ts: kind(ts)
    raise TypeError(f"TaylorSeer can cache tensor or tuple-of-tensor outputs, got {type(out).__name__}")


def stack_position(i: int, n: int) -> str:
    """Where block ``i`` of a stack of ``n`` sits: "only", "first", "middle" or "last" (the first block records the
    stack's input, the last one turns its output into the stack's residual)."""
    return "only" if n == 1 else "first" if i == 0 else "last" if i == n - 1 else "middle"


class TaylorState(BaseState):
    def __init__(self, meter: MemoryMeter | None = None):
        self.meter = meter
        self.ladders = None
        self.reset()

    def reset(self, *args, **kwargs) -> None:
        if self.meter is not None and self.ladders:
            self.meter.add(-self.nbytes())
        self.ladders: list[TaylorLadder] | None = None
        self.rebuild = None
        self.last_step: int | None = None
        self.input_shape: tuple | None = None
        self.run_full = True
        self.stack_input: torch.Tensor | None = None
        self.step = None  # lite mode: this forward's StepInfo, for the last block

    @property
    def ready(self) -> bool:
        return self.ladders is not None

    def nbytes(self) -> int:
        return sum(lad.nbytes() for lad in self.ladders or ())


class _CacheHookBase(ModelHook):
    _is_stateful = True

    def __init__(self, config, schedule: CacheSchedule, step_source, count, meter: MemoryMeter | None = None):
        super().__init__()
        self.meter = meter
        self.order = config.order
        self.distance = config.distance
        self.factor_dtype = torch_dtype(config.factor_dtype)
        self.schedule = schedule
        self.step_source = step_source
        self.count = count

    def _state(self, step) -> TaylorState:
        state = self.state_manager.get_state()
        if state.last_step is not None and step.step_index < state.last_step:
            state.reset()  # a new generation in the same context (pipelines without an end-of-call reset)
        state.last_step = step.step_index
        return state

    def _decide(self, step, state: TaylorState, input_shape) -> bool:
        """True: run the module. Predict only off full steps (:meth:`CacheSchedule.step_full`: decided once per
        forward from this schedule and what the attention method requires, or by the adaptive schedule's probe) and
        when the ladder fits this input."""
        if self.schedule.step_full(step) or not state.ready:
            return True
        return state.input_shape != input_shape

    def _store(self, state: TaylorState, out, step, input_shape) -> None:
        tensors, rebuild = _flatten(out)
        before = state.nbytes()  # whatever the state held, replaced ladders included
        if state.ladders is None or state.input_shape != input_shape or len(state.ladders) != len(tensors):
            state.ladders = [TaylorLadder(self.order, self.distance, self.factor_dtype) for _ in tensors]
        state.rebuild = rebuild
        state.input_shape = input_shape
        pos = step.position(self.distance)
        differences = self.schedule.takes_differences(step.step_index)
        for lad, t in zip(state.ladders, tensors, strict=True):
            lad.update(t, pos, differences)
        if self.meter is not None:
            self.meter.add(state.nbytes() - before)

    def _predict(self, state: TaylorState, step, dtype):
        pos = step.position(self.distance)
        return state.rebuild([lad.predict(pos, dtype) for lad in state.ladders])

    def reset_state(self, module):
        self.state_manager.reset()
        return module


class TaylorSeerHook(_CacheHookBase):
    """Caches one module's output (attention, feed-forward, ...)."""

    def __init__(self, config, schedule, step_source, count, meter: MemoryMeter | None = None):
        super().__init__(config, schedule, step_source, count, meter)
        self.state_manager = StateManager(TaylorState, init_kwargs={"meter": meter})

    # torch.compile: the decision, the ladders and the prediction read Python state that changes every step (step
    # index, positions, counters). This frame is a compiler boundary and its host-side parts are never traced; the
    # module's own forward is compiled as its own frame. Under compilation that is one graph break before and one
    # after each cached module, and no recompilation per step.
    @torch.compiler.disable(recursive=False)
    def new_forward(self, module, *args, **kwargs):
        begun = self._begin(args, kwargs)
        if begun is None or begun[0]:
            out = self.fn_ref.original_forward(*args, **kwargs)
            if begun is not None:
                self._finish(begun, out)
            return out
        return self._predicted(begun, args, kwargs)

    @torch.compiler.disable
    def _begin(self, args, kwargs):
        """None: pass through; else ``(compute, step, state, input_shape)``."""
        step = self.step_source()
        if step is None:
            return None
        state = self._state(step)
        first = args[0] if args else next(iter(kwargs.values()), None)
        in_shape = tuple(first.shape) if isinstance(first, torch.Tensor) else None
        return self._decide(step, state, in_shape), step, state, in_shape

    @torch.compiler.disable
    def _finish(self, begun, out) -> None:
        _, step, state, in_shape = begun
        self._store(state, out, step, in_shape)
        self.count("cache:computed")

    @torch.compiler.disable
    def _predicted(self, begun, args, kwargs):
        _, step, state, _ = begun
        self.count("cache:predicted")
        first = args[0] if args else next(iter(kwargs.values()), None)
        dtype = first.dtype if isinstance(first, torch.Tensor) else torch.float32
        return self._predict(state, step, dtype)


class LiteBlockHook(_CacheHookBase):
    """Lite mode: one cached residual for the whole block stack (memory: ``order + 1`` tensors per branch).

    Full steps: the first block records its input, the last block stores ``output - input``. Predicted steps: every
    block passes ``hidden_states`` through untouched and the last block adds the predicted residual.
    """

    def __init__(self, config, schedule, step_source, count, meter, position: str, shared: StateManager):
        super().__init__(config, schedule, step_source, count, meter)
        self.position = position  # "first", "middle", "last" (or "only")
        self.state_manager = shared  # one StateManager shared by all blocks of the stack

    @torch.compiler.disable(recursive=False)  # a compiler boundary, as TaylorSeerHook.new_forward
    def new_forward(self, module, *args, **kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        state = self._begin(hs)
        if state is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        if state.run_full:
            out = self.fn_ref.original_forward(*args, **kwargs)
            if self.position in ("last", "only"):
                self._finish(state, out)
            return out
        return self._skipped(state, hs)

    @torch.compiler.disable
    def _begin(self, hs):
        """This forward's shared state (None: pass through); the first block decides for the whole stack."""
        step = self.step_source()
        if step is None:
            return None
        if self.position not in ("first", "only"):
            state = self.state_manager.get_state()
            state.step = step
            return state
        state = self._state(step)
        state.step = step
        state.run_full = self._decide(step, state, tuple(hs.shape))
        state.stack_input = hs
        self.count("cache:computed" if state.run_full else "cache:predicted")
        return state

    @torch.compiler.disable
    def _finish(self, state, out) -> None:
        self._store(state, out - state.stack_input, state.step, tuple(state.stack_input.shape))
        state.stack_input = None

    @torch.compiler.disable
    def _skipped(self, state, hs):
        if self.position not in ("last", "only"):
            return hs
        state.stack_input = None
        return hs + self._predict(state, state.step, hs.dtype)


class ProbeHook(ModelHook):
    """Adaptive schedule (:class:`accel.caches.adaptive.AdaptiveSchedule`): the probe blocks always run; the first
    (``position`` "first" or "only", :func:`stack_position`) records its ``hidden_states`` input, the last ("last" or
    "only") hands the residual ``output - input`` of that stream to the schedule, which decides the rest of the step
    before the next block.

    ``reduce``: sums a small tensor over the context-parallel ranks (identity without parallelism), so that every
    rank decides from the whole sequence.
    """

    _is_stateful = True

    def __init__(self, schedule, step_source, position: str, slot: dict, reduce=None):
        super().__init__()
        self.schedule = schedule
        self.step_source = step_source
        self.position = position
        self.slot = slot  # shared by the first and last probe hooks of one transformer
        self.reduce = reduce

    @torch.compiler.disable(recursive=False)  # a compiler boundary, as TaylorSeerHook.new_forward
    def new_forward(self, module, *args, **kwargs):
        step = self._begin(args, kwargs)
        out = self.fn_ref.original_forward(*args, **kwargs)
        if step is not None and self.position in ("last", "only"):
            self._decide(step, out)
        return out

    @torch.compiler.disable
    def _begin(self, args, kwargs):
        step = self.step_source()
        if step is None:
            return None
        if self.position in ("first", "only"):
            hs = args[0] if args else kwargs.get("hidden_states")
            self.slot["input"] = hs if isinstance(hs, torch.Tensor) else None
        return step

    @torch.compiler.disable
    def _decide(self, step, out) -> None:
        x = self.slot.pop("input", None)
        outs = [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]
        same = [t for t in outs if x is not None and t.shape == x.shape]
        if not same:
            raise RuntimeError(
                f"adaptive caching: no output of the probe block matches its hidden_states input "
                f"{None if x is None else tuple(x.shape)}; use threshold=None (a fixed schedule) for this model"
            )
        self.schedule.decide(step, same[-1] - x, self.reduce)

    def reset_state(self, module):
        self.schedule.reset()
        self.slot.clear()
        return module


def cache_hooks(transformer, spec, cfg, schedule: CacheSchedule, *, step_source, count, meter: MemoryMeter,
                reduce=None):  # fmt: skip
    """``(module, hook)`` pairs of the feature cache for one transformer.

    ``step_source()``: the current StepInfo (None: pass through); ``count(event)``: where cache events are counted.
    Full mode hooks the modules TaylorSeer caches for the family (``spec.cache_module_patterns``); lite mode hooks
    the block stack (``spec.blocks``) and caches one residual of it. An adaptive schedule also hooks its probe
    blocks (the first ``cfg.probe_blocks``, which then always run: nothing inside them is cached); ``reduce`` sums
    its signal over context-parallel ranks.
    """
    from accel.pipelines.spec import modules_matching

    blocks = spec.blocks(transformer)
    probe, hooks = [], []
    if schedule.adaptive:
        n = schedule.probe_blocks
        if len(blocks) <= n:
            raise ConfigError(
                f"adaptive caching (threshold=...) runs the first probe_blocks={n} blocks on every step and predicts "
                f"the rest, but {type(transformer).__name__} has {len(blocks)} blocks (ModelSpec {spec.name!r}); "
                "lower probe_blocks or use threshold=None"
            )
        probe, blocks = blocks[:n], blocks[n:]
        slot: dict = {}
        for i, block in enumerate(probe):
            position = stack_position(i, n)
            if position != "middle":  # middle probe blocks just run
                hooks.append((block, ProbeHook(schedule, step_source, position, slot, reduce)))
    if not cfg.lite:
        inside_probe = {id(m) for b in probe for m in b.modules()}
        targets = [(n, m) for n, m in modules_matching(transformer, spec.cache_module_patterns)
                   if id(m) not in inside_probe]  # fmt: skip
        if not targets:
            raise UnsupportedModelError(
                f"no cacheable modules found in {type(transformer).__name__} (ModelSpec {spec.name!r})"
            )
        return hooks + [(m, TaylorSeerHook(cfg, schedule, step_source, count, meter)) for _, m in targets]
    if not blocks:
        raise UnsupportedModelError(
            f"lite caching needs the transformer blocks (cache_block_pattern) of ModelSpec {spec.name!r}"
        )
    shared = StateManager(TaylorState, init_kwargs={"meter": meter})
    for i, block in enumerate(blocks):
        position = stack_position(i, len(blocks))
        hooks.append((block, LiteBlockHook(cfg, schedule, step_source, count, meter, position, shared)))
    return hooks
