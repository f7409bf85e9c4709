"""TaylorSeer-style feature caching on diffusers' ModelHook / HookRegistry / StateManager.

On full steps a cached module runs and its output refreshes a ladder of finite differences; on the other steps the
module does not run and its output is predicted from the ladder. State lives in a diffusers ``StateManager``, one
state per ``cache_context`` (cond / uncond), reset when the pipeline call ends.

Differences are taken over sigma (default), timestep or step index (``distance``): flow-matching schedules are not
uniform in steps, so the same step gap means different sigma gaps over the run.

This module knows nothing of pipelines: the caller injects where the current step comes from (``step_source``), which
steps are full (``is_full``) and where to count events (``count``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from accel.config import torch_dtype
from accel.hosts.diffusers_internals import BaseState, ModelHook, StateManager


def _flatten(out) -> tuple[list[torch.Tensor], Callable[[list[torch.Tensor]], Any]]:
    """Tensors of a module output (a tensor or a tuple/list of tensors) and how to rebuild it."""
    if isinstance(out, torch.Tensor):
        return [out], lambda ts: ts[0]
    if isinstance(out, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in out):
        kind = type(out)
        return list(out), lambda ts: kind(ts)
    raise TypeError(f"TaylorSeer can cache tensor or tuple-of-tensor outputs, got {type(out).__name__}")


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

    def is_full(self, step_index: int, num_steps: int | None) -> bool:
        if step_index < self.warmup_steps:
            return True
        if num_steps is not None and step_index >= num_steps - self.final_full_steps:
            return True
        if self.force_full is not None and self.force_full(step_index, num_steps):
            return True
        return (step_index - (self.warmup_steps - 1)) % self.interval == 0

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
    (``role`` "start" or "only") records its ``hidden_states`` input, the last ("end" or "only") hands the residual
    ``output - input`` of that stream to the schedule, which decides the rest of the step before the next block.

    ``reduce``: sums a small tensor over the context-parallel ranks (identity without parallelism), so that every
    rank decides from the whole sequence.
    """

    _is_stateful = True

    def __init__(self, schedule, step_source, role: str, slot: dict, reduce=None):
        super().__init__()
        self.schedule = schedule
        self.step_source = step_source
        self.role = role
        self.slot = slot  # shared by the start and end hooks of one transformer
        self.reduce = reduce
        self.state_manager = StateManager(TaylorState)  # unused: makes diffusers reset this hook after each call

    @torch.compiler.disable(recursive=False)  # a compiler boundary, as TaylorSeerHook.new_forward
    def new_forward(self, module, *args, **kwargs):
        step = self._begin(args, kwargs)
        out = self.fn_ref.original_forward(*args, **kwargs)
        if step is not None and self.role in ("end", "only"):
            self._decide(step, out)
        return out

    @torch.compiler.disable
    def _begin(self, args, kwargs):
        step = self.step_source()
        if step is None:
            return None
        if self.role in ("start", "only"):
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
