"""Step resolution that any host can feed: which denoising step a transformer forward belongs to.

What a host may know, best first: the step index and count (diffusers' cache context, which also names the guidance
branch and may carry sigma), the scheduler's timestep schedule with this forward's timestep, a sigma schedule with
this forward's sigma (ComfyUI's ``sample_sigmas`` and ``sigmas``, also a Wan 2.2 stage's slice of it), or nothing,
in which case forwards are counted per branch. :class:`StepResolver` turns that into one
:class:`~accel.state.StepInfo` per forward, including the full-step decision that the sparse warm-up,
Re-ttention's recalibration and the feature cache share.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from accel.attention_kernels import TokenLayout

from .state import StepInfo

# How far a forward's timestep may sit from its schedule entry: pipelines hand the transformer the timestep in the
# latents' dtype, and Flux divides it by 1000 in that dtype too: two bfloat16 roundings (2**-8 each) move it by up
# to about 0.8%. Where neighbouring entries are closer than that (the first steps of a shifted schedule), the nearest
# one is taken.
RELATIVE_TOLERANCE = 1e-2


def _match(schedule: torch.Tensor | None, value: float | None) -> int | None:
    """Index of ``value`` in ``schedule`` (the nearest entry, within :data:`RELATIVE_TOLERANCE` or 1e-3 absolute
    on small values), or None."""
    if value is None or not isinstance(schedule, torch.Tensor) or schedule.numel() == 0:
        return None
    diff = (schedule.detach().float().cpu().flatten() - value).abs()
    i = int(diff.argmin())
    return i if float(diff[i]) <= max(1e-3, RELATIVE_TOLERANCE * abs(value)) else None


class StepResolver:
    """One per installed transformer. ``full_step(index, num_steps)``: whether a step is computed in full."""

    def __init__(self, transformer: str, full_step: Callable[[int, int | None], bool] | None = None):
        self.transformer = transformer
        self.full_step = full_step
        self.calls: dict[str, int] = {}

    def reset(self) -> None:
        """End of a generation: forward counting starts again."""
        self.calls.clear()

    def resolve(
        self,
        layout: TokenLayout,
        *,
        branch: str = "default",
        step_index: int | None = None,
        num_steps: int | None = None,
        timestep: float | None = None,
        sigma: float | None = None,
        timesteps: torch.Tensor | None = None,
        sigmas: torch.Tensor | None = None,
        key_valid: torch.Tensor | None = None,
    ) -> StepInfo:
        """The StepInfo of one forward. ``timesteps``: the scheduler's timestep per step; ``sigmas``: the sigma
        schedule (``num_steps + 1`` entries, the last one the final sigma, as schedulers and ComfyUI keep it)."""
        if step_index is None:
            step_index = _match(timesteps, timestep)
        if step_index is None:
            step_index = _match(sigmas, sigma)
            if step_index is not None and num_steps is None:
                num_steps = sigmas.numel() - 1
        if step_index is None:
            step_index = self.calls.get(branch, 0)  # no schedule known: count forwards per branch
        self.calls[branch] = self.calls.get(branch, 0) + 1
        if num_steps is None and isinstance(timesteps, torch.Tensor) and timesteps.numel():
            num_steps = timesteps.numel()
        if sigma is None and isinstance(sigmas, torch.Tensor) and num_steps is not None and step_index < sigmas.numel():
            sigma = float(sigmas[step_index])
        full = True if self.full_step is None else bool(self.full_step(int(step_index), num_steps))
        return StepInfo(
            step_index=int(step_index),
            num_steps=num_steps,
            branch=branch,
            layout=layout,
            timestep=timestep,
            sigma=sigma,
            transformer=self.transformer,
            full=full,
            key_valid=key_valid,
        )
