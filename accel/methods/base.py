"""What every sparse attention method shares: dense warm-up steps, dense first layers, short sequences, backend,
the key-coverage guard, and the do-nothing parts of the :class:`~accel.methods.AttentionMethod` protocol."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

from accel.attention_kernels.api import TRITON_HEAD_DIMS, EmptyQueryBlockError

from ..state import LayerKey, Stats, StepInfo


def dense_steps(fraction: float, num_steps: int | None) -> int:
    """Number of leading dense steps; with an unknown step count assume the published 50."""
    return int(fraction * (num_steps if num_steps else 50) + 0.5)


class MethodBase:
    """Holds the config and the architecture keys of the transformers served; no state, nothing forced full."""

    name = "method"

    def __init__(self, config, models: dict[str, dict] | None = None):
        self.config = config
        self.models = dict(models or {})

    def requires_full(self, step_index: int, num_steps: int | None) -> bool:
        return False

    def reset(self) -> None:
        pass

    def memory(self) -> dict[str, int]:
        return {}


class WarmupMethod(MethodBase):
    """A method with a dense warm-up (``dense_step_fraction``): those steps are full steps of a feature cache."""

    def requires_full(self, step_index: int, num_steps: int | None) -> bool:
        """Steps a feature cache must compute in full: the dense warm-up must not be approximated at all."""
        return step_index < dense_steps(self.config.dense_step_fraction, num_steps)


def runs_dense(cfg, step: StepInfo, layer: LayerKey, stats: Stats) -> bool:
    """True (and counted, with the reason) when this call keeps the original dense attention.

    ``cfg`` has ``dense_layers``, ``dense_step_fraction``, ``block_size`` and ``min_blocks``.
    """
    if layer.index < cfg.dense_layers:
        stats.add("dense", "first_layers")
        return True
    if step.step_index < dense_steps(cfg.dense_step_fraction, step.num_steps):
        stats.add("dense", "warmup_steps")
        return True
    if math.ceil(step.layout.num_tokens / cfg.block_size) < cfg.min_blocks:
        stats.add("dense", "short_sequence")
        return True
    return False


def kernel_backend(backend: str, q) -> str:
    """The configured backend, except that ``auto`` on CUDA with a head dim the Triton kernel is not built for still
    gets a sparse kernel (FlexAttention)."""
    if backend == "auto" and q.is_cuda and q.shape[-1] not in TRITON_HEAD_DIMS:
        return "flex"
    return backend


def checked_sparse(stats: Stats, run: Callable[[], tuple]):
    """Run one sparse attention call and count it; ``run()`` returns ``(out, density)`` and passes
    ``require_keys=True`` to the kernels.

    A mask that would leave real queries without any key (their output zeros) is refused by the kernel entry
    point: the call then keeps the original dense attention, counted as ``dense:empty_query_block`` and warned
    about, so a mask-builder bug can cost speed but never silently corrupt the output.
    """
    try:
        out, density = run()
    except EmptyQueryBlockError as e:
        stats.add("dense", "empty_query_block")
        warnings.warn(f"accel: running dense instead: {e}", RuntimeWarning, stacklevel=3)
        return None
    stats.add("sparse", density=density)
    return out
