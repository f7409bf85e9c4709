"""Acceleration belongs to the pipeline object it was applied to, even when pipelines share a transformer.

diffusers shares one transformer between pipelines (``WanPipeline.from_pipe(pipe)``,
``WanPipeline(**pipe.components)``),
and our hooks sit on that shared module. Each installation therefore has an :class:`Ownership`, and its hooks act
only while their owner is running: an accelerated pipeline's class is swapped, for that instance only, for a
same-named subclass whose ``__call__`` marks the owner as running for the duration of the call. Any other pipeline
using the transformer runs it untouched.

A holder that cannot be called (a bare object with a ``.transformer``, as in tests) owns its transformer outright:
its acceleration applies to every forward, and no other installation may share that transformer.
"""

from __future__ import annotations

import contextlib
import functools
from contextvars import ContextVar

RUNNING: ContextVar[Ownership | None] = ContextVar("accel_running_owner", default=None)


class Ownership:
    """Whether an installation's hooks act on the current call."""

    def __init__(self, scoped: bool):
        self.scoped = scoped

    def active(self) -> bool:
        return not self.scoped or RUNNING.get() is self


def is_scoped_holder(pipe) -> bool:
    """Pipelines (callable holders) scope acceleration to their own calls."""
    import torch

    return callable(pipe) and not isinstance(pipe, torch.nn.Module) and not isinstance(pipe, type)


@functools.cache
def owned_class(cls: type) -> type:
    """``cls`` with a ``__call__`` that runs the instance's own acceleration (one subclass per class, cached).

    Same name, module and docstring as ``cls``, so ``save_pretrained`` (``_class_name``), reprs and messages are
    unchanged; ``disable`` puts the original class back.
    """
    base_call = cls.__call__

    @functools.wraps(base_call)
    def __call__(self, *args, **kwargs):
        installed = getattr(self, "_accel_state", None)
        token = RUNNING.set(installed.ownership if installed is not None else None)
        try:
            return base_call(self, *args, **kwargs)
        finally:
            RUNNING.reset(token)

    return type(
        cls.__name__,
        (cls,),
        {"__call__": __call__, "__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__,
         "__accel_base__": cls},
    )  # fmt: skip


def take(pipe) -> None:
    """Swap ``pipe``'s class for its owned subclass (instance-scoped; a class is never patched)."""
    object.__setattr__(pipe, "__class__", owned_class(type(pipe)))


def release(pipe) -> None:
    base = type(pipe).__dict__.get("__accel_base__")
    if base is not None:
        object.__setattr__(pipe, "__class__", base)


@contextlib.contextmanager
def running(pipe):
    """Run ``pipe``'s acceleration for code that calls its transformer directly (a custom denoising loop)::

    with accel.running(pipe):
        noise_pred = pipe.transformer(latents, timestep=t, ...)
    """
    installed = getattr(pipe, "_accel_state", None)
    if installed is None:
        raise ValueError("this pipeline is not accelerated; call accel.accelerate(pipe, preset) first")
    token = RUNNING.set(installed.ownership)
    try:
        yield pipe
    finally:
        RUNNING.reset(token)
