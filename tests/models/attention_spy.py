"""Watching attention calls in the family tests.

- :func:`observed_attention`: what a family's self-attention modules really hand to
  ``F.scaled_dot_product_attention`` (families whose processors call it directly: CogVideoX, Mochi), next to what the
  spec's ``layout_from_inputs`` says about the same forward; on the untouched pipeline, so the plugin plays no part.
- :func:`routed_calls`: what the diffusers router hands the core on an accelerated pipeline.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import torch


@contextmanager
def observed_attention(pipe, spec):
    """Yields ``{"layouts": [TokenLayout per transformer forward], "calls": [(forward index, q [B, H, S, D] shape)
    per SDPA call made inside a selected self-attention module]}``, filled while the block runs."""
    seen = {"layouts": [], "calls": []}
    inside = []
    transformer = pipe.transformer

    def on_forward(module, args, kwargs):
        seen["layouts"].append(spec.layout_from_inputs(module, args, kwargs))

    hooks = [transformer.register_forward_pre_hook(on_forward, with_kwargs=True)]

    def enter(*_):
        inside.append(True)

    def leave(*_):  # returns None: the module's output stays as it is
        inside.pop()

    for _, module in spec.self_attention_layers(transformer):
        hooks.append(module.register_forward_pre_hook(enter))
        hooks.append(module.register_forward_hook(leave))
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, *args, **kwargs):
        if inside:
            seen["calls"].append((len(seen["layouts"]) - 1, tuple(query.shape)))
        return sdpa(query, *args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        yield seen
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
        for h in hooks:
            h.remove()


class RoutedCall(NamedTuple):
    """One self-attention call the diffusers router handed the core."""

    q_shape: tuple  # [B, S, H, D]
    k_shape: tuple
    layer: int  # the global layer index
    step: object  # the StepInfo of the forward
    key_valid: torch.Tensor | None  # key padding read from the call's mask


def routed_calls(monkeypatch) -> list[RoutedCall]:
    """Record every call the router hands :func:`accel.core.attend` inside an accelerated layer, for the test."""
    import accel.hosts.diffusers as host

    seen, real = [], host.attend

    def spy(q, k, v, step, layer, **kw):
        if layer is not None:
            seen.append(RoutedCall(tuple(q.shape), tuple(k.shape), layer.layer.index, step, kw.get("key_valid")))
        return real(q, k, v, step, layer, **kw)

    monkeypatch.setattr(host, "attend", spy)
    return seen
