"""The one place that touches diffusers internals: hook registries, stateful-hook state and cache contexts, and
the module-global attention call sites of model files.

``tests/integration/test_bridge_contract.py`` checks every assumption made here against the installed diffusers,
so an upgrade that changes them fails loudly there instead of silently elsewhere. Everything else (the diffusers
host, the feature cache) imports these names from here.
"""

from __future__ import annotations

import functools
import importlib
import threading
import types
from collections.abc import Callable
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, CacheContext, StateManager, _set_cache_context

__all__ = [
    "BaseState",
    "CacheContext",
    "HookRegistry",
    "ModelHook",
    "StateManager",
    "add_hook",
    "context_parallel_group",
    "context_parallel_kind",
    "current_context",
    "dense_forward_op",
    "enable_context_parallel",
    "has_hook",
    "install_call_site",
    "is_compiled",
    "refresh_context_targets",
    "remove_hook",
    "set_cache_context",
    "templated_attention",
    "ulysses_heads",
    "uninstall_call_site",
]

CALL_SITE_SYMBOL = "dispatch_attention_fn"
CP_HOOK_PREFIXES = ("cp_input---", "cp_output---")  # hooks/context_parallel.py's hook name templates

# ----------------------------------------------------------------------------------------------------------------
# Attention call sites. A model file reaches attention in one of two ways (its ModelSpec's ``route``):
# - "dispatch": through its module-global ``dispatch_attention_fn`` (Wan, Flux, HunyuanVideo, ... processors), which
#   is replaced by a routed function;
# - "sdpa": through ``F.scaled_dot_product_attention`` with ``F`` the module-global ``torch.nn.functional``
#   (AttnProcessor2_0, CogVideoX, Mochi, PixArt processors), where ``F`` is replaced by a proxy of
#   torch.nn.functional whose ``scaled_dot_product_attention`` is routed (torch itself is never patched).
# A call site stays replaced while at least one accelerated pipeline uses it; the router falls through to the
# original whenever no accelerated layer is running, so every other pipeline in the process is untouched.

ROUTES = {"dispatch": "dispatch_attention_fn", "sdpa": "F"}
_lock = threading.Lock()
_installed: dict[tuple[str, str], tuple[Any, int]] = {}  # (module, route) -> (original symbol, reference count)


class _RoutedFunctional(types.ModuleType):
    """``torch.nn.functional`` with a routed ``scaled_dot_product_attention``; every other name is the real one."""

    def __init__(self, functional, routed_sdpa):
        super().__init__(functional.__name__)
        self.__accel_original__ = functional
        self.scaled_dot_product_attention = routed_sdpa

    def __getattr__(self, name):
        return getattr(self.__accel_original__, name)


def install_call_site(call_site: str, router: Callable[..., Any], route: str = "dispatch") -> None:
    """Route ``call_site``'s attention (``route``: "dispatch" or "sdpa") through ``router(original, *a, **kw)``."""
    with _lock:
        key = (call_site, route)
        if key in _installed:
            original, count = _installed[key]
            _installed[key] = (original, count + 1)
            return
        module = importlib.import_module(call_site)
        symbol = ROUTES[route]
        original = getattr(module, symbol, None)
        target = original if route == "dispatch" else getattr(original, "scaled_dot_product_attention", None)
        if target is None:
            raise RuntimeError(
                f"{call_site} has no {symbol}{'' if route == 'dispatch' else '.scaled_dot_product_attention'}; this "
                "diffusers version is not supported by accel (see tests/integration/test_bridge_contract.py)"
            )

        @functools.wraps(target)
        def routed(*args, **kwargs):
            return router(target, *args, **kwargs)

        routed.__accel_original__ = target
        setattr(module, symbol, routed if route == "dispatch" else _RoutedFunctional(original, routed))
        _installed[key] = (original, 1)


def uninstall_call_site(call_site: str, route: str = "dispatch") -> None:
    with _lock:
        key = (call_site, route)
        if key not in _installed:
            return
        original, count = _installed[key]
        if count > 1:
            _installed[key] = (original, count - 1)
            return
        setattr(importlib.import_module(call_site), ROUTES[route], original)
        del _installed[key]


def call_site_installed(call_site: str, route: str = "dispatch") -> bool:
    return (call_site, route) in _installed


def current_context(state_manager: StateManager) -> CacheContext | None:
    """The cache context diffusers last handed a stateful hook's state manager (None outside any)."""
    return state_manager._context


def set_cache_context(module: torch.nn.Module, context: CacheContext | None) -> None:
    """Open (or with None close) a cache context on ``module``'s stateful hooks, as ``cache_context()`` does."""
    _set_cache_context(module, context)


def add_hook(module: torch.nn.Module, hook: ModelHook, name: str, inside_context_parallel: bool = False) -> None:
    """Register ``hook`` on ``module`` as its outermost hook, or with ``inside_context_parallel`` below the context
    parallel split / gather hooks already there (``enable_parallelism``'s ``cp_input---*`` / ``cp_output---*``), so
    that it sees the rank's shard as the module computes it (whichever of ``enable_parallelism`` and ``accelerate``
    ran first)."""
    created = not hasattr(module, "_diffusers_hook")
    registry = HookRegistry.check_if_exists_or_initialize(module)
    if created:
        module._accel_created_registry = True
    order = registry._hook_order  # innermost first
    cp = [i for i, n in enumerate(order) if n.startswith(CP_HOOK_PREFIXES)] if inside_context_parallel else []
    # diffusers has no insert: take off the lowest CP hook and everything above it (outermost first), register
    # ours, and put them back in their order. A CP hook's state is its config and a cached signature, which
    # ``initialize_hook`` rebuilds.
    lifted = [(n, registry.hooks[n]) for n in reversed(order[cp[0] :])] if cp else []
    for n, _ in lifted:
        registry.remove_hook(n, recurse=False)
    registry.register_hook(hook, name)
    for n, h in reversed(lifted):
        registry.register_hook(h, n)


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


# ----------------------------------------------------------------------------------------------------------------
# Context parallelism (``enable_parallelism(config=ContextParallelConfig(...))``, models/attention_dispatch.py).
# A processor's ``dispatch_attention_fn`` call carries ``parallel_config`` and the rank's shard of the sequence with
# every head, ``[B, S / ranks, H, D]``. The CP backends hand it to ``_templated_context_parallel_attention`` with
# their forward op; under Ulysses the template all-to-alls q, k, v so that the op sees the full sequence in order
# with a contiguous group of heads, ``[B, S, H / ranks, D]`` (rank r: heads r * H/ranks ..), and all-to-alls the
# op's output back. Under Ring the op sees local queries against one key / value chunk per step.


def context_parallel_kind(parallel_config) -> str | None:
    """How a call's ``parallel_config`` splits attention: "ulysses" (also the uneven "anything" variant), "ring"
    (Ring, or Ulysses x Ring), or None (none that accel knows: the call keeps its original attention)."""
    cp = getattr(parallel_config, "context_parallel_config", None)
    if cp is None:
        return None
    if getattr(cp, "ring_degree", 1) > 1:
        return "ring"
    return "ulysses" if getattr(cp, "ulysses_degree", 1) > 1 else None


def ulysses_heads(parallel_config, num_heads: int) -> int:
    """Global index of the first head this rank holds inside the Ulysses template, for a call with ``num_heads``.

    Both templates cut the heads into ``ranks`` contiguous groups in rank order: ``H / ranks`` each, or with
    ``ulysses_anything`` ``ceil(H / ranks)`` each (heads padded up to a multiple, the padding dropped again).
    """
    cp = parallel_config.context_parallel_config
    degree = cp.ulysses_degree
    return cp._ulysses_local_rank * (-(-num_heads // degree))


def context_parallel_group(transformer: torch.nn.Module):
    """The process group over which ``transformer``'s context parallelism splits the sequence (every ring and Ulysses
    rank), or None when it runs unsplit."""
    cp = getattr(getattr(transformer, "_parallel_config", None), "context_parallel_config", None)
    mesh = getattr(cp, "_flattened_mesh", None)
    if mesh is None or (getattr(cp, "_world_size", None) or 1) <= 1:
        return None
    return mesh.get_group()


def dense_forward_op():
    """The native (SDPA) forward op of the CP templates: ``op(ctx, q, k, v, attn_mask, dropout_p, is_causal, scale,
    enable_gqa, return_lse, _save_ctx=True, _parallel_config=None)``, q/k/v ``[B, S, H, D]``."""
    from diffusers.models import attention_dispatch

    return attention_dispatch._native_attention_forward_op


def templated_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, *, forward_op, parallel_config):
    """diffusers' templated context-parallel attention of the rank's shard ``[B, S / ranks, H, D]`` (out alike),
    with ``forward_op`` (signature of :func:`dense_forward_op`) run where the template runs its backend's op, and
    the native backward op (the core never takes calls that need gradients)."""
    from diffusers.models import attention_dispatch

    return attention_dispatch._templated_context_parallel_attention(
        q, k, v, attn_mask, dropout_p, is_causal, scale, False, False,
        forward_op=forward_op, backward_op=attention_dispatch._native_attention_backward_op,
        _parallel_config=parallel_config,
    )  # fmt: skip


def enable_context_parallel(transformer: torch.nn.Module, *, ulysses_degree: int = 1, ring_degree: int = 1) -> None:
    """``transformer.enable_parallelism(config=ContextParallelConfig(...))`` that also works on CPU (gloo).

    diffusers picks the rank's device as ``rank % torch.accelerator.device_count()``, a division by zero on a
    machine without an accelerator; there the count reads 1 while parallelism is set up (the device is then
    ``cpu:0``, which only names the CPU).
    """
    from diffusers import ContextParallelConfig

    config = ContextParallelConfig(ulysses_degree=ulysses_degree, ring_degree=ring_degree)
    if torch.accelerator.device_count() > 0:
        transformer.enable_parallelism(config=config)
        return
    real = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        transformer.enable_parallelism(config=config)
    finally:
        torch.accelerator.device_count = real
