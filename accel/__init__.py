"""diffusion-fast: training-free sparse attention and feature caching for diffusers DiT pipelines.

    from accel import accelerate, disable
    accelerate(pipe, "radial")   # in place; returns pipe
    disable(pipe)                # back to the original pipeline

``import accel`` stays light: no triton, no diffusers model modules, no CUDA initialisation.
"""

from .api import accel_config, accelerate, attention_method, disable, is_accelerated, stats, supported_presets
from .config import (
    AccelConfig,
    DraftConfig,
    RadialConfig,
    RettentionConfig,
    SparseVDiTConfig,
    TaylorSeerConfig,
    list_presets,
)
from .ownership import running


def calibrate(pipe, prompts, **kwargs):
    """Sparse-vDiT calibration: see :func:`accel.calibration.calibrate` (imported lazily: it loads the
    kernels)."""
    from .calibration import calibrate as _calibrate

    return _calibrate(pipe, prompts, **kwargs)


def efficiency_table(device="cpu", dtype=None, head_dim: int = 64, remeasure: bool = False, budget_s: float = 3.0):
    """The efficiency table the never-slower decisions read for ``device``, ``dtype`` (default float32) and
    ``head_dim``: measured on first use and cached on disk (see :mod:`accel.methods.efficiency`); ``remeasure``
    measures again and overwrites the cache; ``budget_s`` bounds a measurement (backends past it keep their typed
    values)."""
    import torch

    from .methods import efficiency

    dtype = dtype or torch.float32
    if remeasure:
        efficiency.forget(device, dtype, head_dim)
    return efficiency.table_for(device, dtype, head_dim, remeasure=remeasure, budget_s=budget_s)


def set_efficiency(mode: str | None, notify=None) -> None:
    """Where efficiency tables come from in this process: ``auto`` (cache, else measure), ``remeasure``, ``typed``
    (built-in values, never measured), a JSON path (pinned), or None (``$ACCEL_EFFICIENCY``). ``notify(text)``
    receives the one-line notice printed when a table is measured (default: the ``accel`` logger)."""
    from .methods import efficiency

    efficiency.set_mode(mode)
    efficiency.set_notifier(notify)


__version__ = "0.1.0"

__all__ = [
    "AccelConfig",
    "DraftConfig",
    "RadialConfig",
    "RettentionConfig",
    "SparseVDiTConfig",
    "TaylorSeerConfig",
    "accel_config",
    "accelerate",
    "attention_method",
    "calibrate",
    "disable",
    "efficiency_table",
    "is_accelerated",
    "list_presets",
    "running",
    "set_efficiency",
    "stats",
    "supported_presets",
]
