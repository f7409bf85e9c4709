"""The one place that touches diffusers internals (hooks, cache contexts, attention call sites).

``tests/integration/test_bridge_contract.py`` checks every assumption made here against the installed diffusers,
so an upgrade that changes them fails loudly there instead of silently here.
"""

from __future__ import annotations

import functools
import importlib
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, CacheContext, StateManager, _set_cache_context

from .state import CURRENT_LAYER, CURRENT_STEP, LayerPlan, StepInfo

CALL_SITE_SYMBOL = "dispatch_attention_fn"
STEP_HOOK = "accel.step"
LAYER_HOOK = "accel.layer"
CACHE_HOOK = "accel.cache"

# ----------------------------------------------------------------------------------------------------------------
# Attention call sites: the model module's global ``dispatch_attention_fn`` is replaced by a router while at least
# one accelerated pipeline uses that module. The router falls through to the original whenever no accelerated
# layer is running, so every other pipeline in the process is untouched.

_lock = threading.Lock()
_installed: dict[str, tuple[Callable, int]] = {}  # call site -> (original, reference count)


def install_call_site(call_site: str, router: Callable[..., Any]) -> None:
    with _lock:
        module = importlib.import_module(call_site)
        if call_site in _installed:
            original, count = _installed[call_site]
            _installed[call_site] = (original, count + 1)
            return
        original = getattr(module, CALL_SITE_SYMBOL, None)
        if original is None:
            raise RuntimeError(
                f"{call_site} has no {CALL_SITE_SYMBOL}; this diffusers version is not supported by accel "
                "(see tests/integration/test_bridge_contract.py)"
            )

        @functools.wraps(original)
        def routed(*args, **kwargs):
            return router(original, *args, **kwargs)

        routed.__accel_original__ = original
        setattr(module, CALL_SITE_SYMBOL, routed)
        _installed[call_site] = (original, 1)


def uninstall_call_site(call_site: str) -> None:
    with _lock:
        if call_site not in _installed:
            return
        original, count = _installed[call_site]
        if count > 1:
            _installed[call_site] = (original, count - 1)
            return
        setattr(importlib.import_module(call_site), CALL_SITE_SYMBOL, original)
        del _installed[call_site]


def call_site_installed(call_site: str) -> bool:
    return call_site in _installed


# ----------------------------------------------------------------------------------------------------------------
# Hooks


class _NoState(BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class StepHook(ModelHook):
    """On the transformer: records the step, guidance branch and token layout of each forward in CURRENT_STEP.

    Stateful so that diffusers hands it the pipeline's ``cache_context`` (name, step_index, sigma, ...) and resets it
    at the end of every pipeline call.
    """

    _is_stateful = True

    def __init__(self, transformer_name: str, layout_fn, timestep_fn, pipe, on_reset=(), active=lambda: True):
        super().__init__()
        self.active = active  # whether the owning installation acts on this call (see accel.ownership)
        self.on_reset = tuple(on_reset)  # callables run when diffusers resets stateful hooks (end of a pipeline call)
        self.transformer_name = transformer_name
        self.layout_fn = layout_fn
        self.timestep_fn = timestep_fn
        try:
            self.pipe_ref = weakref.ref(pipe)
        except TypeError:  # holders without weakref support (e.g. SimpleNamespace)
            self.pipe_ref = lambda: pipe
        self.state_manager = StateManager(_NoState)  # receives CacheContext from model.cache_context(...)
        self.calls: dict[str, int] = {}

    def _context(self) -> CacheContext | None:
        return self.state_manager._context

    def step_info(self, module, args, kwargs) -> StepInfo:
        ctx = self._context()
        branch = ctx.name if ctx is not None else "default"
        t = self.timestep_fn(args, kwargs)
        t_val = float(t.max()) if isinstance(t, torch.Tensor) and t.numel() else None
        index = n = None
        if ctx is not None and ctx.step_index is not None:
            index, n = ctx.step_index, ctx.num_inference_steps
        if index is None or n is None:
            found = self._scheduler_lookup(t_val)
            if found is not None:
                index = found[0] if index is None else index
                n = found[1] if n is None else n
        if index is None:  # no context and no scheduler match: count forwards per branch
            index = self.calls.get(branch, 0)
        self.calls[branch] = self.calls.get(branch, 0) + 1
        sigma = ctx.sigma if ctx is not None else None
        if sigma is None:
            sigma = self._scheduler_sigma(int(index), n)
        return StepInfo(
            step_index=int(index),
            num_steps=n,
            branch=branch,
            layout=self.layout_fn(module, args, kwargs),
            timestep=t_val,
            sigma=sigma,
            transformer=self.transformer_name,
        )

    def _scheduler_sigma(self, index: int, num_steps: int | None) -> float | None:
        pipe = self.pipe_ref()
        sigmas = getattr(getattr(pipe, "scheduler", None), "sigmas", None) if pipe is not None else None
        if not isinstance(sigmas, torch.Tensor) or num_steps is None or sigmas.numel() < num_steps:
            return None
        return float(sigmas[index])

    def _scheduler_lookup(self, t_val):
        pipe = self.pipe_ref()
        sched = getattr(pipe, "scheduler", None) if pipe is not None else None
        ts = getattr(sched, "timesteps", None)
        if t_val is None or not isinstance(ts, torch.Tensor) or ts.numel() == 0:
            return None
        diff = (ts.float().cpu() - t_val).abs()
        i = int(diff.argmin())
        if float(diff[i]) > 1e-3 * max(1.0, abs(t_val)):
            return None
        return i, ts.numel()

    def new_forward(self, module, *args, **kwargs):
        if not self.active():
            return self.fn_ref.original_forward(*args, **kwargs)
        # Pipelines that open no cache context (PixArt, ...) get one, so stateful hooks below keep their state.
        opened = self._context() is None
        if opened:
            _set_cache_context(module, CacheContext("default"))
        token = CURRENT_STEP.set(self.step_info(module, args, kwargs))
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            CURRENT_STEP.reset(token)
            if opened:
                _set_cache_context(module, None)

    def reset_state(self, module):
        self.calls.clear()
        for fn in self.on_reset:
            fn()
        return module


class LayerHook(ModelHook):
    """On a self-attention module: makes its LayerPlan current while it runs (when its owner is running)."""

    def __init__(self, plan: LayerPlan, active=lambda: True):
        super().__init__()
        self.plan = plan
        self.active = active

    def new_forward(self, module, *args, **kwargs):
        if not self.active():
            return self.fn_ref.original_forward(*args, **kwargs)
        token = CURRENT_LAYER.set(self.plan)
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            CURRENT_LAYER.reset(token)


def add_hook(module: torch.nn.Module, hook: ModelHook, name: str) -> None:
    created = not hasattr(module, "_diffusers_hook")
    registry = HookRegistry.check_if_exists_or_initialize(module)
    if created:
        module._accel_created_registry = True
    registry.register_hook(hook, name)


def remove_hook(module: torch.nn.Module, name: str) -> None:
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None or name not in registry.hooks:
        return
    index = registry._hook_order.index(name)
    above = registry._fn_refs[index + 1] if index + 1 < len(registry._fn_refs) else None
    above_forward = None if above is None else above.forward
    registry.remove_hook(name, recurse=False)
    if above is not None and above.original_forward is not None:
        # diffusers re-points the next hook's ``forward`` at what lay below the removed hook, but for a hook with
        # ``new_forward`` that field is the hook itself and the chain continues through ``original_forward``:
        # left alone, the next hook would be skipped and the removed one would still run. (Pipelines sharing a
        # transformer stack hooks and remove them in any order.)
        above.original_forward, above.forward = above.forward, above_forward
    if registry.hooks:
        return
    # Leave the module as we found it: remove_hook leaves the original bound forward as an instance attribute;
    # drop it when it is exactly the class's forward, and drop a registry we created ourselves.
    fwd = module.__dict__.get("forward")
    if getattr(fwd, "__self__", None) is module and getattr(fwd, "__func__", None) is type(module).forward:
        del module.__dict__["forward"]
    if module.__dict__.pop("_accel_created_registry", False):
        del module._diffusers_hook


def refresh_context_targets(transformer: torch.nn.Module) -> None:
    """cache_context() walks a cached list of hooked submodules; invalidate it after adding or removing hooks."""
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None:
        registry.invalidate_child_registries_cache()


def has_hook(module: torch.nn.Module, name: str) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and name in registry.hooks


# ----------------------------------------------------------------------------------------------------------------


def is_compiled(module: torch.nn.Module) -> bool:
    """True for ``torch.compile(module)`` wrappers and for modules compiled in place with ``module.compile()``."""
    from torch._dynamo.eval_frame import OptimizedModule

    return isinstance(module, OptimizedModule) or getattr(module, "_compiled_call_impl", None) is not None
