"""The embedded, trained text-to-video model ("shapes-wan") and what made it: the prompt grammar and its
procedural clips (``grammar``), the pixel-packing VAE (``pixel_vae``), the pipeline (``model``), the training
script (``train``) and the prompt-following metric (``readback``).

Importing this package registers the VAE's module with diffusers' loader, so after ``import accel.embedded``,
``WanPipeline.from_pretrained(accel.embedded.SHAPES_WAN_DIR)`` works as for any folder.
"""

from . import pixel_vae  # noqa: F401  (diffusers loads only components whose module is already imported)
from .model import SHAPES_WAN_DIR, build_untrained, load_shapes_wan

__all__ = ["SHAPES_WAN_DIR", "build_untrained", "load_shapes_wan"]
