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
    "current_context",
    "has_hook",
    "install_call_site",
    "is_compiled",
    "refresh_context_targets",
    "remove_hook",
    "set_cache_context",
    "uninstall_call_site",
]

CALL_SITE_SYMBOL = "dispatch_attention_fn"

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
