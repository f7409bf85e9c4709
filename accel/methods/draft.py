"""DraftAttention planner: dense warm-up, then per-call, per-head block selection from a pooled attention map."""

from __future__ import annotations

import math

from accel.attention_kernels.draft import draft_attention

from ..config import DraftConfig
from ..state import LayerKey, Stats, StepInfo
from . import register_method
from .base import WarmupMethod, checked_sparse, kernel_backend, pays, runs_dense


@register_method(DraftConfig)
class DraftMethod(WarmupMethod):
    name = "draft"
    config: DraftConfig

    def expected_cost(self, layout) -> float:
        """Block work of a call before it is planned: the kept fraction of the video block pairs plus the
        diagonal, and the planning (pooling, draft map, top-k, token reorder), whose share of the dense work falls
        with the sequence length (measured on CPU: about 0.15 at 2,304 tokens, under 0.04 at 8,192)."""
        cfg = self.config
        blocks = max(1, math.ceil(layout.video_tokens / cfg.block_size))
        text = layout.text_len / max(1, layout.num_tokens)
        kept = min(1.0, (1.0 - cfg.sparsity) + 1.0 / blocks)
        planning = min(0.5, 320.0 / layout.num_tokens)
        return kept * (1 - text) ** 2 + (1 - (1 - text) ** 2) + planning

    def attend(self, q, k, v, step: StepInfo, layer: LayerKey, scale, stats: Stats):
        cfg = self.config
        if runs_dense(cfg, step, layer, stats):
            return None

        if not pays(cfg, self.expected_cost(step.layout), q, stats):
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
            # The mask changes every call; its density is what the stats report. Read after the launch, it waits
            # for the mask's kept-block count (copied to the host ahead of the kernel), not for the kernel; the
            # kernel entry's key check costs no sync (DraftBlockMask).
            return out, mask.density

        return checked_sparse(stats, run)
