"""DraftAttention planner: dense warm-up, then per-call, per-head block selection from a pooled attention map."""

from __future__ import annotations

from accel.attention_kernels.draft import draft_attention

from ..config import DraftConfig
from ..state import LayerKey, Stats, StepInfo
from . import register_method
from .base import WarmupMethod, checked_sparse, kernel_backend, runs_dense


@register_method(DraftConfig)
class DraftMethod(WarmupMethod):
    name = "draft"
    config: DraftConfig

    def attend(self, q, k, v, step: StepInfo, layer: LayerKey, scale, stats: Stats):
        cfg = self.config
        if runs_dense(cfg, step, layer, stats):
            return None

        def run():
            out, mask = draft_attention(
                q,
                k,
                v,
                step.layout,
                cfg.sparsity,
                block_size=cfg.block_size,
                patch=cfg.patch,
                scale=scale,
                backend=kernel_backend(cfg.backend, q),
                pool_backend=cfg.pool_backend,
                return_mask=True,
                require_keys=True,
            )
            # The mask changes every call; its density (one host sync on CUDA, shared with the key check) is what
            # the stats report.
            return out, mask.density

        return checked_sparse(stats, run)
