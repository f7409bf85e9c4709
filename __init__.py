"""ComfyUI registry entry point: ComfyUI imports a custom node package's root ``__init__.py`` (a clone of this
repository in ``custom_nodes/``, as the registry installs it). The nodes live in the installed ``accel`` package
(:mod:`accel.hosts.comfy_nodes`), as for the ``comfyui/`` node folder.

Absolute imports only: tools that import this file without its folder as a parent package (pytest, in a checkout
folder whose name is not a Python identifier) must get the same result.
"""

try:
    from accel.hosts.comfy_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, comfy_entrypoint
except ImportError as e:  # the package is missing from the Python that runs ComfyUI
    raise ImportError(
        "diffusion-fast is not installed in the Python environment running ComfyUI: run "
        "`python -m pip install -e custom_nodes/<this folder>` with that environment's python, then restart ComfyUI"
    ) from e

if comfy_entrypoint is None:  # no v3 API in this ComfyUI: the classic mappings are the entry point
    del comfy_entrypoint

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
