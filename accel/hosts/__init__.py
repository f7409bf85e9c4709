"""Hosts: each translates its calling convention into the core's attention call (:func:`accel.core.attend`) and
feeds :class:`accel.steps.StepResolver` what it knows about the denoising step. ``diffusers`` is the first host;
a ComfyUI host will sit beside it."""
