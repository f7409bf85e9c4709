"""Radial attention planner: static energy-decay mask, dense warm-up steps and first layers."""

from __future__ import annotations

import math

import torch

from accel.attention_kernels import block_sparse_attention, radial_mask
from accel.attention_kernels.api import TRITON_HEAD_DIMS

from .config import RadialConfig
from .state import Stats, StepInfo


def dense_steps(fraction: float, num_steps: int | None) -> int:
    """Number of leading dense steps; with an unknown step count assume the published 50."""
    return int(fraction * (num_steps if num_steps else 50) + 0.5)


class RadialMethod:
    name = "radial"

    def __init__(self, config: RadialConfig):
        self.config = config

    def requires_full(self, step_index: int, num_steps: int | None) -> bool:
        """Steps a feature cache must compute in full: the dense warm-up must not be approximated at all."""
        return step_index < dense_steps(self.config.dense_step_fraction, num_steps)

    def mask_for(self, step: StepInfo, device: torch.device):
        cfg = self.config
        return radial_mask(step.layout, cfg.block_size, cfg.decay, sink=cfg.sink, device=device)

    def attend(self, q, k, v, step: StepInfo, layer_index: int, scale, stats: Stats):
        """Sparse output ``[B, S, H, D]``, or None when this call should run dense."""
        cfg = self.config
        if layer_index < cfg.dense_layers:
            stats.add("dense", "first_layers")
            return None
        if step.step_index < dense_steps(cfg.dense_step_fraction, step.num_steps):
            stats.add("dense", "warmup_steps")
            return None
        if math.ceil(step.layout.num_tokens / cfg.block_size) < cfg.min_blocks:
            stats.add("dense", "short_sequence")
            return None
        mask = self.mask_for(step, q.device)
        if mask.density > cfg.max_density:
            stats.add("dense", "mask_too_dense")
            return None
        backend = cfg.backend
        if backend == "auto" and q.is_cuda and q.shape[-1] not in TRITON_HEAD_DIMS:
            backend = "flex"  # head dims the Triton kernel is not built for still get a sparse kernel
        stats.add("sparse", density=mask.density)
        return block_sparse_attention(q, k, v, mask, scale=scale, backend=backend)
