"""Radial attention planner: static energy-decay mask, dense warm-up steps and first layers."""

from __future__ import annotations

import torch
from accel.attention_kernels import radial_mask

from ..config import RadialConfig
from ..state import LayerKey, Stats, StepInfo
from . import register_method
from .base import WarmupMethod, checked_sparse, kernel_backend, pays, runs_dense, static_plan


@register_method(RadialConfig)
class RadialMethod(WarmupMethod):
    name = "radial"
    config: RadialConfig

    @classmethod
    def unsupported(cls, spec) -> str | None:
        if not spec.is_video:
            # Radial's mask is a temporal energy decay: on one frame it is the frame's own dense block. Mapping
            # image rows onto its frame axis degenerates at 128-token blocks (a +-1 row band, Re-ttention's
            # mask without its corrections), so it is refused rather than silently dense or silently bad.
            return (
                "radial attention decays attention with the distance between video frames, and an image has one "
                "frame; use draft, sparse-vdit or rettention (or taylorseer) on image models"
            )
        return None

    def mask_for(self, layout, device: torch.device):
        cfg = self.config
        return radial_mask(layout, cfg.block_size, cfg.decay, sink=cfg.sink, device=device)

    def attend(self, q, k, v, step: StepInfo, layer: LayerKey, scale, stats: Stats):
        """Sparse output ``[B, S, H, D]``, or None when this call should run dense."""
        cfg = self.config
        if runs_dense(cfg, step, layer, stats):
            return None
        plan = static_plan(cfg, step.layout, lambda layout: (self.mask_for(layout, q.device), None), q)
        if plan.mask.density > cfg.max_density:
            stats.add("dense", "mask_too_dense")
            return None
        if not pays(cfg, plan.cost, q, stats):
            return None
        backend = kernel_backend(cfg.backend, q)
        return checked_sparse(
            stats, lambda: (plan.run(q, k, v, step.layout, scale=scale, backend=backend), plan.density)
        )
