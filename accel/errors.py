"""The one base of every user-facing error: front ends (the CLI, the ComfyUI node) turn an :class:`AccelError` into a
message, anything else is a bug and keeps its traceback.

Subclasses also derive from the built-in type that describes them, so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class AccelError(Exception):
    """A problem the user can fix; the message says how."""


class ConfigError(AccelError, ValueError):
    """An unknown preset or parameter, or a value out of range."""


class UnsupportedModelError(AccelError, ValueError):
    """A pipeline or transformer accel has no ModelSpec for, or a preset that cannot apply to it."""


class StateError(AccelError, RuntimeError):
    """Applying acceleration twice, after torch.compile, or to a transformer another holder owns."""


class PlanError(AccelError, ValueError):
    """A Sparse-vDiT plan that is missing, invalid or made for another model or request."""


class PlanNotFoundError(PlanError, FileNotFoundError):
    """No plan file where one was expected."""
