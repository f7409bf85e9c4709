"""Hosts: each translates its calling convention into the core's attention call (:func:`accel.core.attend`) and
feeds :class:`accel.steps.StepResolver` what it knows about the denoising step.

- ``diffusers``: hooks on the transformer and its attention modules, routers at the model files' attention call
  sites (``diffusers_internals`` is the one bridge to private diffusers names).
- ``comfy``: ComfyUI's ``optimized_attention_override`` (chained to any previous one), a ``DIFFUSION_MODEL`` wrapper
  that records the token grid, step and branch of each forward, an ``OUTER_SAMPLE`` wrapper that resets per-run
  state, and TaylorSeer through block replace patches, all on a cloned ``MODEL``; ``comfy_nodes`` holds the nodes
  (loaded by ComfyUI through the repository's ``comfyui/`` node folder). Neither imports ``comfy`` at import time.
"""
