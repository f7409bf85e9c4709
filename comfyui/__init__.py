"""ComfyUI node folder of diffusion-fast: link (or copy) this folder into ``ComfyUI/custom_nodes/`` after installing
the ``diffusion-fast`` package into ComfyUI's Python. The nodes themselves ship inside the package
(:mod:`accel.hosts.comfy_nodes`); this file only hands them to ComfyUI (v3 entry point, or the classic mappings on
ComfyUI versions without the v3 API)."""

try:
    from accel.hosts.comfy_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, comfy_entrypoint
except ImportError as e:  # the package is missing from the Python that runs ComfyUI
    raise ImportError(
        "diffusion-fast is not installed in the Python environment running ComfyUI: run "
        "`python -m pip install -e /path/to/diffusion-fast` with that environment's python, then restart ComfyUI"
    ) from e

if comfy_entrypoint is None:  # no v3 API in this ComfyUI: the classic mappings are the entry point
    del comfy_entrypoint

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
