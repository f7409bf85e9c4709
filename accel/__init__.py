"""diffusion-fast: training-free sparse attention and feature caching for diffusers DiT pipelines.

    from accel import accelerate, disable
    accelerate(pipe, "radial")   # in place; returns pipe
    disable(pipe)                # back to the original pipeline

``import accel`` stays light: no triton, no diffusers model modules, no CUDA initialisation.
"""

from .api import accel_config, accelerate, disable, is_accelerated, stats
from .config import AccelConfig, RadialConfig, TaylorSeerConfig, list_presets

__version__ = "0.1.0"

__all__ = [
    "AccelConfig",
    "RadialConfig",
    "TaylorSeerConfig",
    "accel_config",
    "accelerate",
    "disable",
    "is_accelerated",
    "list_presets",
    "stats",
]
