"""Attention methods: one planner per module, each registered for its config type.

A method is built once per :func:`accel.accelerate` from its resolved config and the architecture keys of the
transformers it serves, and then answers every self-attention call of those transformers through
:meth:`AttentionMethod.attend`. ``accelerate`` knows nothing of any method: it looks the config's type up here.
A config type's method module is ``accel.methods.<config.method>`` (``-`` read as ``_``) and registers itself on
import, so the registry fills lazily and ``import accel`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable

import torch

from ..state import LayerKey, Stats, StepInfo


@runtime_checkable
class AttentionMethod(Protocol):
    """What the core asks of an attention method."""

    name: str
    config: Any

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: StepInfo, layer: LayerKey, scale, stats: Stats
    ) -> torch.Tensor | None:
        """Self-attention ``[B, S, H, D]`` -> ``[B, S, H, D]``, or None to keep the original attention (the method
        counts why in ``stats``)."""

    def requires_full(self, step_index: int, num_steps: int | None) -> bool:
        """Steps that must be computed in full (a feature cache may not predict them)."""

    def reset(self) -> None:
        """End of a generation: drop per-generation state."""

    def memory(self) -> dict[str, int]:
        """Bytes of state the method holds, for ``accel.stats``."""


_REGISTRY: dict[type, type] = {}


def register_method(config_type: type):
    """Class decorator: the method serving configs of exactly ``config_type``."""

    def deco(cls):
        _REGISTRY[config_type] = cls
        return cls

    return deco


def method_class(config) -> type:
    cls = _REGISTRY.get(type(config))
    if cls is None:
        importlib.import_module(f"{__name__}.{config.method.replace('-', '_')}")
        cls = _REGISTRY.get(type(config))
    if cls is None:
        raise TypeError(f"no attention method is registered for {type(config).__name__}")
    return cls


def build_method(config, models: dict[str, dict]) -> AttentionMethod:
    """The method for a resolved attention ``config``; ``models``: transformer name -> architecture key."""
    return method_class(config)(config, models)


__all__ = ["AttentionMethod", "build_method", "method_class", "register_method"]
