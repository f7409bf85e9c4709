"""The diffusers host: hooks on the transformer (one StepInfo per forward) and on each self-attention module (its
LayerPlan while it runs), and routers at the model file's attention call site that hand ``q, k, v`` to the core.

Per attention call (files in order): the model's processor calls its attention (``dispatch_attention_fn`` or
``F.scaled_dot_product_attention``), which this module's router intercepts (:func:`route_dispatch` /
:func:`route_sdpa`); it rejects what only diffusers' conventions can make unsafe (masks, dropout, context
parallelism, ...) and calls :func:`accel.core.attend` with the StepInfo the :class:`StepHook` resolved
(:mod:`accel.steps`) and the LayerPlan the :class:`LayerHook` made current; the method (``accel.methods``) returns
the output or None, and then the original attention runs.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from ..core import attend, key_mask
from ..state import CURRENT_LAYER, CURRENT_STEP, LayerKey, LayerPlan
from ..steps import StepResolver
from . import diffusers_internals as di

STEP_HOOK = "accel.step"
LAYER_HOOK = "accel.layer"
CACHE_HOOK = "accel.cache"


class _NoState(di.BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class StepHook(di.ModelHook):
    """On the transformer: resolves the StepInfo of each forward into CURRENT_STEP (when its owner is running).

    Stateful so that diffusers hands it the pipeline's ``cache_context`` (name, step_index, sigma, ...) and resets it
    at the end of every pipeline call.
    """

    _is_stateful = True

    def __init__(self, resolver: StepResolver, spec, pipe, on_reset=(), active: Callable[[], bool] = lambda: True):
        super().__init__()
        self.resolver = resolver
        self.spec = spec
        self.on_reset = tuple(on_reset)  # run when diffusers resets stateful hooks (end of a pipeline call)
        self.active = active  # whether the owning installation acts on this call (see accel.ownership)
        try:
            self.pipe_ref = weakref.ref(pipe)
        except TypeError:  # holders without weakref support (e.g. SimpleNamespace)
            self.pipe_ref = lambda: pipe
        self.state_manager = di.StateManager(_NoState)  # receives CacheContext from model.cache_context(...)

    def step_info(self, module, args, kwargs):
        ctx = di.current_context(self.state_manager)
        t = self.spec.timestep_from_inputs(args, kwargs)
        pipe = self.pipe_ref()
        scheduler = getattr(pipe, "scheduler", None) if pipe is not None else None
        return self.resolver.resolve(
            self.spec.layout_from_inputs(module, args, kwargs),
            branch=ctx.name if ctx is not None else "default",
            step_index=ctx.step_index if ctx is not None else None,
            num_steps=ctx.num_inference_steps if ctx is not None and ctx.step_index is not None else None,
            timestep=float(t.max()) if isinstance(t, torch.Tensor) and t.numel() else None,
            sigma=ctx.sigma if ctx is not None else None,
            timesteps=getattr(scheduler, "timesteps", None),
            sigmas=getattr(scheduler, "sigmas", None),
            key_valid=self.spec.key_valid_from_inputs(module, args, kwargs),
        )

    def new_forward(self, module, *args, **kwargs):
        if not self.active():
            return self.fn_ref.original_forward(*args, **kwargs)
        # Pipelines that open no cache context (PixArt, ...) get one, so stateful hooks below keep their state.
        opened = di.current_context(self.state_manager) is None
        if opened:
            di.set_cache_context(module, di.CacheContext("default"))
        token = CURRENT_STEP.set(self.step_info(module, args, kwargs))
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            CURRENT_STEP.reset(token)
            if opened:
                di.set_cache_context(module, None)

    def reset_state(self, module):
        self.resolver.reset()
        for fn in self.on_reset:
            fn()
        return module


class LayerHook(di.ModelHook):
    """On a self-attention module: makes its LayerPlan current while it runs (when its owner is running)."""

    def __init__(self, plan: LayerPlan, active: Callable[[], bool] = lambda: True):
        super().__init__()
        self.plan = plan
        self.active = active

    def new_forward(self, module, *args, **kwargs):
        if not self.active():
            return self.fn_ref.original_forward(*args, **kwargs)
        token = CURRENT_LAYER.set(self.plan.for_forward())
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            CURRENT_LAYER.reset(token)


# ----------------------------------------------------------------------------------------------------------------
# Routers: diffusers' calling conventions -> accel.core.attend

_DISPATCH_KWARGS = {
    "attn_mask",
    "dropout_p",
    "is_causal",
    "scale",
    "enable_gqa",
    "attention_kwargs",
    "backend",
    "parallel_config",
}


def _dispatch_reason(args, kwargs) -> str | None:
    """Why a ``dispatch_attention_fn`` call cannot take the sparse path (None: it can). Anything unknown goes dense."""
    if len(args) != 3 or set(kwargs) - _DISPATCH_KWARGS:
        return "call_signature"
    if kwargs.get("parallel_config") is not None:
        # Context parallelism hands each rank a shard of the sequence: a mask built for the full grid would be
        # wrong there. Until sparse attention composes with the CP templates, use the original attention.
        return "context_parallel"
    return _flags_reason(kwargs) or (None if not kwargs.get("attention_kwargs") else "attention_kwargs")


def _flags_reason(kwargs) -> str | None:
    if kwargs.get("dropout_p", 0.0) or kwargs.get("is_causal", False) or kwargs.get("enable_gqa", False):
        return "dropout_causal_or_gqa"
    return None


def _routed(layer, q, k, v, attn_mask, scale):
    """``accel.core.attend`` on ``[B, S, H, D]`` tensors, with a key-only ``attn_mask`` as key padding; None (counted)
    when the call keeps the original attention."""
    key_valid = None
    if attn_mask is not None:
        key_valid = key_mask(attn_mask, q.shape[0], k.shape[1]) if q.dim() == 4 else None
        if key_valid is None:
            layer.stats.add("fallback", "attn_mask")
            return None
    return attend(q, k, v, CURRENT_STEP.get(), layer, scale=scale, key_valid=key_valid)


def route_dispatch(original, *args, **kwargs):
    """``dispatch_attention_fn(query, key, value, **kw)``: q/k/v ``[B, S, H, D]`` in and out."""
    layer = CURRENT_LAYER.get()
    if layer is None:
        return original(*args, **kwargs)
    reason = _dispatch_reason(args, kwargs)
    if reason is not None:
        layer.stats.add("fallback", reason)
        return original(*args, **kwargs)
    q, k, v = args
    out = _routed(layer, q, k, v, kwargs.get("attn_mask"), kwargs.get("scale"))
    return original(*args, **kwargs) if out is None else out


_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def route_sdpa(original, *args, **kwargs):
    """``F.scaled_dot_product_attention(query, key, value, ...)``: q/k/v ``[B, H, S, D]`` in and out."""
    layer = CURRENT_LAYER.get()
    if layer is None:
        return original(*args, **kwargs)
    if len(args) > len(_SDPA_ARGS) or set(kwargs) - set(_SDPA_ARGS) or len(args) < 3:
        layer.stats.add("fallback", "call_signature")
        return original(*args, **kwargs)
    named = {**dict(zip(_SDPA_ARGS, args, strict=False)), **kwargs}
    reason = _flags_reason(named)
    q, k, v = (named[n] for n in ("query", "key", "value"))
    if reason is None and q.dim() != 4:
        reason = "call_signature"
    if reason is not None:
        layer.stats.add("fallback", reason)
        return original(*args, **kwargs)
    out = _routed(layer, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), named.get("attn_mask"),
                  named.get("scale"))  # fmt: skip
    return original(*args, **kwargs) if out is None else out.transpose(1, 2)


ROUTERS = {"dispatch": route_dispatch, "sdpa": route_sdpa}


# ----------------------------------------------------------------------------------------------------------------
# Installing on one transformer


def install_transformer(installed, name: str, transformer, spec, pipe, method, cache_hooks, full_step) -> None:
    """Put the hooks of one installation on ``transformer`` (recorded in ``installed`` so they come off again).

    ``cache_hooks``: ``(module, hook)`` pairs from :func:`accel.caches.cache_hooks`; ``full_step(i, n)``: the shared
    full-step decision.
    """
    active = installed.ownership.active
    resets = [method.reset] if method is not None else []
    step_hook = StepHook(StepResolver(name, full_step), spec, pipe, on_reset=resets, active=active)
    _add(installed, transformer, step_hook, STEP_HOOK)
    if method is not None:
        for index, attn in spec.self_attention_layers(transformer):
            plan = LayerPlan(LayerKey(name, index), method, installed.stats)
            _add(installed, attn, LayerHook(plan, active), LAYER_HOOK)
        site = (spec.attention_call_site, spec.route)
        if site not in installed.call_sites:
            di.install_call_site(spec.attention_call_site, ROUTERS[spec.route], spec.route)
            installed.call_sites.append(site)
    for module, hook in cache_hooks:
        _add(installed, module, hook, CACHE_HOOK)
    di.refresh_context_targets(transformer)


def _add(installed, module, hook, kind: str) -> None:
    name = installed.hook_name(kind)
    di.add_hook(module, hook, name)
    installed.hooks.append((module, name))


def remove(installed) -> None:
    """Take every hook and call site of ``installed`` off again (idempotent)."""
    for module, name in reversed(installed.hooks):
        di.remove_hook(module, name)
    for transformer in installed.transformers:
        di.refresh_context_targets(transformer)
    for site, route in installed.call_sites:
        di.uninstall_call_site(site, route)
    installed.hooks.clear()
    installed.call_sites.clear()


is_compiled = di.is_compiled
