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
    """Sparse-vDiT calibration: see :func:`accel.methods.calibration.calibrate` (imported lazily: it loads the
    kernels)."""
    from .methods.calibration import calibrate as _calibrate

    return _calibrate(pipe, prompts, **kwargs)


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
    "is_accelerated",
    "list_presets",
    "running",
    "stats",
    "supported_presets",
]
