"""ComfyUI registry entry point: ComfyUI imports a custom node package's root ``__init__.py`` (a clone of this
repository in ``custom_nodes/``, as the registry installs it). The nodes live in the installed ``accel`` package
(:mod:`accel.hosts.comfy_nodes`); the ``comfyui/`` node folder hands them over (v3 entry point or classic mappings).
"""

from .comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

try:  # the v3 entry point, where this ComfyUI has the v3 API (comfyui/ drops it otherwise)
    from .comfyui import comfy_entrypoint  # noqa: F401
except ImportError:
    pass

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
