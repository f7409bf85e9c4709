"""Re-ttention planner: very sparse static mask, softmax-mass reshape and residual cached per (layer, branch, call).

Schedule (Re-ttention's, scaled to the step count): steps before ``dense_steps`` run dense; from then on every
``interval``-th step is a recalibration step (dense and sparse both run; ``rho`` and the residual are refreshed and
the dense output is returned); the steps between are sparse: ``rho' * sparse + residual`` with
``rho' = rho + ratio_drift * (sparse steps since the recalibration)``.

The residual is kept before the output projection: ``to_out`` is linear, so adding ``R`` before it equals adding
``to_out(R)`` after it (the bias cancels in the difference), as the published code does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accel.attention_kernels import BlockMask, EmptyQueryBlockError, block_sparse_attention
from accel.attention_kernels.permute import TokenPermutation
from accel.attention_kernels.rettention import mass_ratio, reshape_sparse, rettention_mask, rettention_position_mask
from accel.attention_kernels.sparse_vdit import position_major_permutation

from ..config import RettentionConfig, torch_dtype
from ..state import LayerKey, Stats, StepInfo
from . import register_method
from .base import (
    REORDER_COST,
    WarmupMethod,
    checked_sparse,
    dense_steps,
    kernel_backend,
    pays,
    refused,
    runs_dense,
    static_plan,
)


@dataclass
class _RowState:
    """Cached at the last recalibration of one (transformer, layer, branch, call of the layer)."""

    step_index: int  # last step this state served
    rho: torch.Tensor  # [B, H, S] fp32: share of softmax mass inside the mask
    residual: torch.Tensor | None  # [B, S, H, D]: dense - rho * sparse
    sparse_steps: int = 0  # sparse steps since the recalibration (drives the ratio drift)

    def nbytes(self) -> int:
        r = 0 if self.residual is None else self.residual.numel() * self.residual.element_size()
        return self.rho.numel() * self.rho.element_size() + r


@register_method(RettentionConfig)
class RettentionMethod(WarmupMethod):
    name = "rettention"
    config: RettentionConfig

    def __init__(self, config: RettentionConfig, models: dict[str, dict] | None = None):
        super().__init__(config, models)
        self.states: dict[tuple, _RowState] = {}
        self.bytes = 0
        self.peak_bytes = 0

    # ---- schedule ---------------------------------------------------------------------------------------------
    def is_recalibration(self, step_index: int, num_steps: int | None) -> bool:
        start = dense_steps(self.config.dense_step_fraction, num_steps)
        return step_index >= start and (step_index - start) % self.config.recalibration_interval(num_steps) == 0

    def requires_full(self, step_index: int, num_steps: int | None) -> bool:
        """Dense warm-up and recalibration steps must really run (a feature cache must not skip them)."""
        return super().requires_full(step_index, num_steps) or self.is_recalibration(step_index, num_steps)

    def period_cost(self, density: float, num_steps: int | None) -> float:
        """Block work per step over one recalibration period of N steps: the recalibration step runs full
        attention and the sparse pass on this backend (1 + d), each of the N - 1 sparse steps d plus the reshape and
        residual (about 2% of dense work)."""
        n = self.config.recalibration_interval(num_steps)
        return (1.0 + density + (n - 1) * (density + 0.02)) / n

    # ---- state ------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Drop every cached rho and residual (end of a pipeline call)."""
        self.states.clear()
        self._account()

    def _account(self) -> None:
        self.bytes = sum(s.nbytes() for s in self.states.values())
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def memory(self) -> dict[str, int]:
        return {"rettention_bytes": self.bytes, "rettention_peak_bytes": self.peak_bytes}

    def mask_for(self, layout, device) -> BlockMask:
        """The window in the natural token order (see :meth:`plan_mask` for the order calls use)."""
        cfg = self.config
        frames = None if cfg.window_frames < 0 else cfg.window_frames
        return rettention_mask(layout, cfg.block_size, cfg.window_tokens, frames, device=device)

    def plan_mask(self, layout, device) -> tuple[BlockMask, TokenPermutation | None]:
        """The mask calls run with and its token order: a window over every frame of a video (CogVideoX's published
        mask) is one band in position-major order, where whole blocks keep far fewer pairs (at CogVideoX-2B's
        published layout, 64-token blocks: 6.7% of the map instead of 15%); when that order keeps fewer blocks it is
        used (q, k, v permuted, the output inverted)."""
        cfg = self.config
        natural = self.mask_for(layout, device)
        if cfg.window_frames >= 0 or layout.frames < 2:
            return natural, None
        band = rettention_position_mask(layout, cfg.block_size, cfg.window_tokens, device=device)
        if band.density + REORDER_COST >= natural.density:
            return natural, None
        return band, position_major_permutation(layout)

    # ---- attention --------------------------------------------------------------------------------------------
    def attend(self, q, k, v, step: StepInfo, layer: LayerKey, scale, stats: Stats):
        cfg = self.config
        if runs_dense(cfg, step, layer, stats):
            return None
        key = (layer, step.branch, step.call)
        state = self.states.get(key)
        shape = (q.shape[0], q.shape[2], q.shape[1])
        if state is not None and (state.step_index >= step.step_index or tuple(state.rho.shape) != shape):
            # A new generation (the step went back) or a different request: what was cached does not apply.
            del self.states[key]
            state = None
        plan = static_plan(cfg, step.layout, lambda layout: self.plan_mask(layout, q.device), q)
        if not pays(cfg, self.period_cost(plan.cost, step.num_steps), q, stats):
            return None
        backend = kernel_backend(cfg.backend, q)
        if state is None or self.is_recalibration(step.step_index, step.num_steps):
            return self._recalibrate(q, k, v, plan, key, step, layer, scale, backend, stats)
        out = checked_sparse(
            stats, lambda: (plan.run(q, k, v, step.layout, scale=scale, backend=backend), plan.density)
        )
        if out is None:
            return None
        if cfg.reshape:
            out = reshape_sparse(out, state.rho + cfg.ratio_drift * state.sparse_steps)
        if state.residual is not None:
            out = out + state.residual.to(out.dtype)
        state.sparse_steps += 1
        state.step_index = step.step_index
        return out

    def _recalibrate(self, q, k, v, plan, key, step, layer, scale, backend, stats):
        cfg = self.config
        try:  # a mask the sparse steps would refuse: keep this layer dense, nothing to cache
            sparse, lse_sparse = plan.run(q, k, v, step.layout, scale=scale, backend=backend, return_lse=True)
        except EmptyQueryBlockError as e:
            return refused(stats, e)
        mask = plan.mask
        full = BlockMask.full(mask.num_q_blocks, mask.num_k_blocks, mask.block_size, device=q.device)
        dense, lse_full = block_sparse_attention(q, k, v, full, scale=scale, backend=backend, return_lse=True)
        rho = mass_ratio(lse_sparse, lse_full)
        residual = None
        if cfg.residual and (cfg.residual_layers is None or layer.index in cfg.residual_layers):
            approx = reshape_sparse(sparse, rho) if cfg.reshape else sparse
            dtype = torch_dtype(cfg.residual_dtype, dense.dtype)
            residual = (dense.float() - approx.float()).to(dtype)
        self.states[key] = _RowState(step.step_index, rho, residual)
        self._account()
        stats.add("dense", "recalibration")
        return dense
