"""The diffusers host: hooks on the transformer (one StepInfo per forward) and on each self-attention module (its
LayerPlan while it runs), and routers at the model file's attention call site that hand ``q, k, v`` to the core.

Per attention call (files in order): the model's processor calls its attention (``dispatch_attention_fn`` or
``F.scaled_dot_product_attention``), which this module's router intercepts (:func:`route_dispatch` /
:func:`route_sdpa`); it rejects what only diffusers' conventions can make unsafe (masks, dropout, ring
attention, ...) and calls :func:`accel.core.attend` with the StepInfo the :class:`StepHook` resolved
(:mod:`accel.steps`) and the LayerPlan the :class:`LayerHook` made current; the method (``accel.methods``) returns
the output or None, and then the original attention runs.

Under diffusers' context parallelism (``enable_parallelism``), the StepHook sits on the transformer and reads the
unsplit input (the full frame grid; Wan's CP plan splits the sequence at ``blocks.0``), and a call carrying
``parallel_config`` runs the method inside diffusers' Ulysses template on the full sequence and the rank's heads
(:func:`_context_parallel`); Ring falls back to dense, counted ``fallback:ring``.

Under ``torch.compile`` (whole transformer or regional, ``compile_repeated_blocks``; see "torch.compile" below) the
same code runs, but outside the compiled graphs: the hooks' host-side parts are compiler boundaries, and inside a
compiled attention module the router emits one opaque custom op per attention call whose implementation is the
eager router above. Decisions, masks, counters and method state never enter a graph, so nothing per-step is
guarded and the compiled output is the eager accelerated output.
"""

from __future__ import annotations

import itertools
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

    @torch.compiler.disable(recursive=False)
    def new_forward(self, module, *args, **kwargs):
        # A compiler boundary (this frame only): under torch.compile(transformer) the step resolution below reads
        # Python state that changes every step (cache context, scheduler, ``timestep.item()``), which would break
        # the graph several times and recompile per step. Skipping this frame costs one deliberate graph break per
        # forward; ``original_forward`` (the model) is compiled as its own frame.
        entered = self._enter(module, args, kwargs)
        if entered is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            self._exit(module, entered)

    @torch.compiler.disable
    def _enter(self, module, args, kwargs):
        """Host side, never traced: open a cache context if none is open and make this forward's StepInfo current;
        returns what :meth:`_exit` undoes, or None when the owner is not running."""
        if not self.active():
            return None
        # Pipelines that open no cache context (PixArt, ...) get one, so stateful hooks below keep their state.
        opened = di.current_context(self.state_manager) is None
        if opened:
            di.set_cache_context(module, di.CacheContext("default"))
        return CURRENT_STEP.set(self.step_info(module, args, kwargs)), opened

    @torch.compiler.disable
    def _exit(self, module, entered) -> None:
        token, opened = entered
        CURRENT_STEP.reset(token)
        if opened:
            di.set_cache_context(module, None)

    def reset_state(self, module):
        self.resolver.reset()
        for fn in self.on_reset:
            fn()
        return module


_LAYER_HOOKS: dict[int, weakref.ref] = {}  # uid -> LayerHook, for the compiled attention op
_UIDS = itertools.count()


class LayerHook(di.ModelHook):
    """On a self-attention module: makes its LayerPlan current while it runs (when its owner is running)."""

    def __init__(self, plan: LayerPlan, active: Callable[[], bool] = lambda: True):
        super().__init__()
        self.plan = plan
        self.active = active
        self.uid = next(_UIDS)  # names this layer in compiled graphs (see _compiled_call)
        # The entry goes with the hook (disable, or its pipeline collected): the table does not grow per accelerate.
        _LAYER_HOOKS[self.uid] = weakref.ref(self, lambda _, uid=self.uid: _LAYER_HOOKS.pop(uid, None))

    def new_forward(self, module, *args, **kwargs):
        if torch.compiler.is_compiling():
            # Traced: ContextVars cannot be traced (a graph break each), so the layer travels to the router on a
            # plain list that only exists while tracing; the router puts its uid into the graph as a constant.
            _TRACING.append(_TracedLayer(self.uid))
            try:
                return self.fn_ref.original_forward(*args, **kwargs)
            finally:
                _TRACING.pop()
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
    return _flags_reason(kwargs) or (None if not kwargs.get("attention_kwargs") else "attention_kwargs")


def _flags_reason(kwargs) -> str | None:
    if kwargs.get("dropout_p", 0.0) or kwargs.get("is_causal", False) or kwargs.get("enable_gqa", False):
        return "dropout_causal_or_gqa"
    return None


def _routed(layer, q, k, v, attn_mask, scale, heads=None):
    """``accel.core.attend`` on ``[B, S, H, D]`` tensors, with a key-only ``attn_mask`` as key padding; None (counted)
    when the call keeps the original attention. ``heads``: see :func:`accel.core.attend`."""
    key_valid = None
    if attn_mask is not None:
        key_valid = key_mask(attn_mask, q.shape[0], k.shape[1]) if q.dim() == 4 else None
        if key_valid is None:
            layer.stats.add("fallback", "attn_mask")
            return None
    return attend(q, k, v, CURRENT_STEP.get(), layer, scale=scale, key_valid=key_valid, heads=heads)


def route_dispatch(original, *args, **kwargs):
    """``dispatch_attention_fn(query, key, value, **kw)``: q/k/v ``[B, S, H, D]`` in and out."""
    if torch.compiler.is_compiling():
        return _compiled_call("dispatch", original, args, kwargs)
    layer = CURRENT_LAYER.get()
    if layer is None:
        return original(*args, **kwargs)
    reason = _dispatch_reason(args, kwargs)
    if reason is not None:
        layer.stats.add("fallback", reason)
        return original(*args, **kwargs)
    if kwargs.get("parallel_config") is not None:
        return _context_parallel(original, layer, args, kwargs)
    q, k, v = args
    out = _routed(layer, q, k, v, kwargs.get("attn_mask"), kwargs.get("scale"))
    return original(*args, **kwargs) if out is None else out


def _context_parallel(original, layer, args, kwargs):
    """A call under diffusers' context parallelism: q/k/v are the rank's shard ``[B, S / ranks, H, D]``, out alike.

    A sparse mask needs the whole sequence, which no rank holds here (attending within the shard runs and is
    wrong). Under Ulysses the method runs inside diffusers' template instead, as its forward op: after the
    all-to-all it sees ``[B, S, H / ranks, D]``, the full sequence in order with a contiguous group of heads, which
    it is told the global indices of (per-head plans); its dense decisions and fallbacks run the native op there.
    Ring attention hands the op one key / value chunk per step without saying which, so no position-dependent mask
    can be built: the original attention runs, counted ``fallback:ring`` (also for Ulysses x Ring).
    """
    parallel_config = kwargs["parallel_config"]
    kind = di.context_parallel_kind(parallel_config)
    if kind != "ulysses":
        layer.stats.add("fallback", "ring" if kind == "ring" else "context_parallel")
        return original(*args, **kwargs)
    step = CURRENT_STEP.get()
    if step is not None and step.layout.text_len:
        # Joint attention models (Flux, Qwen-Image) split text and image separately and concatenate the shards, so
        # the gathered sequence is [txt_0, img_0, txt_1, img_1, ...], not the layout's order: no mask fits it.
        layer.stats.add("fallback", "context_parallel_joint")
        return original(*args, **kwargs)
    q, k, v = args
    if q.dim() != 4:
        layer.stats.add("fallback", "call_signature")
        return original(*args, **kwargs)
    offset = di.ulysses_heads(parallel_config, q.shape[2])
    dense = di.dense_forward_op()

    def forward_op(ctx, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, return_lse, _save_ctx=True,
                   _parallel_config=None):  # fmt: skip
        # q/k/v [B, S, H / ranks, D]: the full sequence, heads offset .. offset + H / ranks - 1 of H.
        if not return_lse:  # the Ulysses templates never ask for it; anything that does stays dense
            out = _routed(layer, q, k, v, attn_mask, scale, heads=(offset, args[0].shape[2]))
            if out is not None:
                return out
        return dense(ctx, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, return_lse, _save_ctx=_save_ctx,
                     _parallel_config=_parallel_config)  # fmt: skip

    return di.templated_attention(
        q, k, v, kwargs.get("attn_mask"), kwargs.get("dropout_p", 0.0), kwargs.get("is_causal", False),
        kwargs.get("scale"), forward_op=forward_op, parallel_config=parallel_config,
    )  # fmt: skip


_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def route_sdpa(original, *args, **kwargs):
    """``F.scaled_dot_product_attention(query, key, value, ...)``: q/k/v ``[B, H, S, D]`` in and out."""
    if torch.compiler.is_compiling():
        return _compiled_call("sdpa", original, args, kwargs)
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
# torch.compile
#
# Where compile wraps: diffusers hooks replace ``module.forward``, and both ``torch.compile(transformer)`` and
# ``block.compile()`` (regional compilation) compile ``module.__call__``, so every hook inside a compiled module is
# traced. The StepHook is a frame dynamo skips (one graph break per forward under whole-model compilation, none under
# regional compilation, where it runs outside the compiled blocks). A traced attention module hands its call to
# ``accel::hooked_attention``, a custom op whose implementation runs the eager router above at run time: the step
# (set by the StepHook), the method's decision, its masks and its counters are all read there, outside the graph.
# The graph holds the op with the layer's uid and the call's ordinal as constants: nothing that changes per step is
# guarded, so a run compiles once per input shape whatever its step count, and no graph break falls in the attention
# path. The sparse kernels run as they do eagerly (the flex kernel compiled by itself, with Inductor), whatever
# backend compiles the model: under ``aot_eager`` the output stays the sparse output (traced, FlexAttention's eager
# path would ignore our index-built block masks).


class _TracedLayer:
    """The accelerated layer being traced, and how many attention calls its forward has made so far."""

    def __init__(self, uid: int):
        self.uid = uid
        self.calls = 0


_TRACING: list[_TracedLayer] = []


def _originals() -> dict:
    """The attention each route falls back to (what the model files' call sites hold before routing)."""
    from diffusers.models import attention_dispatch

    sdpa = torch.nn.functional.scaled_dot_product_attention
    return {"dispatch": attention_dispatch.dispatch_attention_fn, "sdpa": sdpa}


@torch.library.custom_op("accel::hooked_attention", mutates_args=())
def hooked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    layer_uid: int,
    ordinal: int,
    route: str,
    scale: float | None,
    dropout_p: float,
    is_causal: bool,
) -> torch.Tensor:
    """One attention call of an accelerated layer inside a compiled graph: the eager router at run time.

    ``route`` "dispatch": q/k/v ``[B, S, H, D]``; "sdpa": ``[B, H, S, D]``; out like q with v's head dim
    (contiguous: the fake below must describe the output's strides, whichever path made it).
    """
    original = _originals()[route]
    kwargs = dict(attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
    ref = _LAYER_HOOKS.get(layer_uid)
    hook = ref() if ref is not None else None
    if hook is None or not hook.active():
        return original(q, k, v, **kwargs).contiguous()
    plan = hook.plan
    token = CURRENT_LAYER.set(LayerPlan(plan.layer, plan.method, plan.stats, [ordinal]))
    try:
        return ROUTERS[route](original, q, k, v, **kwargs).contiguous()
    finally:
        CURRENT_LAYER.reset(token)


@hooked_attention.register_fake
def _(q, k, v, attn_mask, layer_uid, ordinal, route, scale, dropout_p, is_causal):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


_OP_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
_NEUTRAL = {"enable_gqa": False, "attention_kwargs": None, "backend": None, "parallel_config": None}


def _compiled_call(route: str, original, args, kwargs):
    """Traced router: the original attention outside accelerated layers, else one ``accel::hooked_attention`` call.

    A call the op cannot carry (other keyword values, a non-standard original) runs the eager router behind a
    compiler boundary instead: correct, and visible as a graph break in dynamo's counters.
    """
    if not _TRACING:
        return original(*args, **kwargs)
    traced = _TRACING[-1]
    ordinal = traced.calls
    traced.calls += 1
    named = {**dict(zip(_OP_ARGS, args, strict=False)), **kwargs}
    carried = (
        len(args) >= 3
        and len(args) <= len(_OP_ARGS)
        and all(n in _OP_ARGS or (n in _NEUTRAL and named[n] == _NEUTRAL[n]) for n in named)
        and original is _originals()[route]
    )
    if not carried:
        return _eager_call(route, original, traced.uid, ordinal, args, kwargs)
    q, k, v = (named[n] for n in ("query", "key", "value"))
    scale = named.get("scale")
    return hooked_attention(
        q, k, v, named.get("attn_mask"), traced.uid, ordinal, route, None if scale is None else float(scale),
        float(named.get("dropout_p", 0.0)), bool(named.get("is_causal", False)),
    )  # fmt: skip


@torch.compiler.disable
def _eager_call(route: str, original, layer_uid: int, ordinal: int, args, kwargs):
    hook = _LAYER_HOOKS[layer_uid]()
    if hook is None or not hook.active():
        return original(*args, **kwargs)
    plan = hook.plan
    token = CURRENT_LAYER.set(LayerPlan(plan.layer, plan.method, plan.stats, [ordinal]))
    try:
        return ROUTERS[route](original, *args, **kwargs)
    finally:
        CURRENT_LAYER.reset(token)


# ----------------------------------------------------------------------------------------------------------------
# Installing on one transformer


def context_parallel_sum(transformer):
    """``sum(t)``: ``t`` summed over the ranks that split ``transformer``'s sequence, read at call time (parallelism
    may be enabled after ``accelerate``); ``t`` itself when the sequence is not split."""

    def total(t: torch.Tensor) -> torch.Tensor:
        group = di.context_parallel_group(transformer)
        if group is None:
            return t
        t = t.clone()
        torch.distributed.all_reduce(t, group=group)
        return t

    return total


def install_transformer(installed, name: str, transformer, spec, pipe, method, cache_hooks, full_step) -> None:
    """Put the hooks of one installation on ``transformer`` (recorded in ``installed`` so they come off again).

    ``cache_hooks``: ``(module, hook)`` pairs from :func:`accel.hosts.diffusers_cache.cache_hooks`;
    ``full_step(i, n)``: the shared full-step decision.
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
        # Under context parallelism a cached block must see what it computes, the rank's shard (lite mode's first
        # block carries the split of the sequence): below diffusers' CP hooks, whichever was installed first.
        _add(installed, module, hook, CACHE_HOOK, inside_context_parallel=True)
    di.refresh_context_targets(transformer)


def _add(installed, module, hook, kind: str, inside_context_parallel: bool = False) -> None:
    name = installed.hook_name(kind)
    di.add_hook(module, hook, name, inside_context_parallel)
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
