"""What every sparse attention method shares: dense warm-up steps, dense first layers, short sequences, backend,
the key-coverage guard, and the do-nothing parts of the :class:`~accel.methods.AttentionMethod` protocol."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from accel.attention_kernels.api import TRITON_HEAD_DIMS, EmptyQueryBlockError, resolve_backend
from accel.attention_kernels.block_mask import BlockMask
from accel.attention_kernels.permute import TokenPermutation
from accel.attention_kernels.text_split import permuted_attention, text_split_attention

from ..state import LayerKey, Stats, StepInfo
from .efficiency import table_for


def dense_steps(fraction: float, num_steps: int | None) -> int:
    """Number of leading dense steps; with an unknown step count assume the published 50."""
    return int(fraction * (num_steps if num_steps else 50) + 0.5)


class MethodBase:
    """Holds the config and the architecture keys of the transformers served; no state, nothing forced full."""

    name = "method"

    def __init__(self, config, models: dict[str, dict] | None = None):
        self.config = config
        self.models = dict(models or {})

    def requires_full(self, step_index: int, num_steps: int | None) -> bool:
        return False

    @classmethod
    def unsupported(cls, spec) -> str | None:
        """Why this method cannot serve models of ``spec`` (a :class:`~accel.pipelines.ModelSpec`), or None."""
        return None

    def reset(self) -> None:
        pass

    def memory(self) -> dict[str, int]:
        return {}


class WarmupMethod(MethodBase):
    """A method with a dense warm-up (``dense_step_fraction``): those steps are full steps of a feature cache."""

    def requires_full(self, step_index: int, num_steps: int | None) -> bool:
        """Steps a feature cache must compute in full: the dense warm-up must not be approximated at all."""
        return step_index < dense_steps(self.config.dense_step_fraction, num_steps)


def runs_dense(cfg, step: StepInfo, layer: LayerKey, stats: Stats) -> bool:
    """True (and counted, with the reason) when this call keeps the original dense attention.

    ``cfg`` has ``dense_layers``, ``dense_step_fraction``, ``block_size`` and ``min_blocks``.
    """
    if layer.index < cfg.dense_layers:
        stats.add("dense", "first_layers")
        return True
    if step.step_index < dense_steps(cfg.dense_step_fraction, step.num_steps):
        stats.add("dense", "warmup_steps")
        return True
    if too_short(cfg, step.layout):
        stats.add("dense", "short_sequence")
        return True
    return False


def too_short(cfg, layout) -> bool:
    """A sequence of fewer than ``cfg.min_blocks`` blocks always keeps dense attention."""
    return math.ceil(layout.num_tokens / cfg.block_size) < cfg.min_blocks


def never_sparse(cfg, num_steps: int | None, layout, num_layers: int | None) -> bool:
    """True when the rules of :func:`runs_dense` keep every call of a whole request dense (every step in the warm-up,
    every layer dense, or a sequence too short); None arguments are unknown and never decide. A method may still
    keep calls dense for its own reasons (a mask too dense to pay)."""
    if num_steps is not None and dense_steps(cfg.dense_step_fraction, num_steps) >= num_steps:
        return True
    if num_layers is not None and cfg.dense_layers >= num_layers:
        return True
    return layout is not None and too_short(cfg, layout)


# Backends "auto" chooses among, per device type, when the efficiency table has them (the best one wins).
AUTO_CANDIDATES = {"cuda": ("triton", "sdpa", "flex"), "cpu": ("sdpa", "flex", "gather")}


def kernel_backend(backend: str, q) -> str:
    """The backend a call runs on: the configured one, or for ``auto`` the most efficient of the device's candidates
    in the measured efficiency table (:mod:`.efficiency`); ``auto`` on CUDA with a head dim the Triton kernel is not
    built for never picks Triton."""
    if backend != "auto":
        return backend
    candidates = AUTO_CANDIDATES.get(q.device.type)
    if not candidates:
        return backend
    if q.is_cuda and q.shape[-1] not in TRITON_HEAD_DIMS:
        candidates = tuple(c for c in candidates if c != "triton")
    table = table_for(q.device, q.dtype, q.shape[-1])
    return max(candidates, key=lambda b: table.get(b, q.device.type, q.shape[1]))


def checked_sparse(stats: Stats, run: Callable[[], tuple]):
    """Run one sparse attention call and count it; ``run()`` returns ``(out, density)`` and passes
    ``require_keys=True`` to the kernels.

    A mask that would leave real queries without any key (their output zeros) is refused by the kernel entry
    point: the call then keeps the original dense attention, counted as ``dense:empty_query_block`` and warned
    about, so a mask-builder bug can cost speed but never silently corrupt the output.
    """
    try:
        out, density = run()
    except EmptyQueryBlockError as e:
        return refused(stats, e)
    stats.add("sparse", density=density)
    return out


def refused(stats: Stats, error: EmptyQueryBlockError) -> None:
    """Count and warn about a mask the kernel entry refused (see :func:`checked_sparse`); the call runs dense."""
    stats.add("dense", "empty_query_block")
    warnings.warn(f"accel: running dense instead: {error}", RuntimeWarning, stacklevel=4)
    return None


def efficiency(backend: str, q, stats: Stats | None = None) -> float:
    """Efficiency of ``backend`` (as configured: ``auto`` resolves) against dense attention on ``q``'s device, dtype
    and head dim, at its sequence length, from the measured table (:func:`accel.methods.efficiency.table_for`);
    ``stats`` records the table used."""
    resolved = resolve_backend(kernel_backend(backend, q), q.device)
    table = table_for(q.device, q.dtype, q.shape[-1])
    if stats is not None:
        stats.tables[table.key] = {"source": table.source, "values": table.values, "by_tokens": table.by_tokens}
    return table.get(resolved, q.device.type, q.shape[1])


def estimated_speedup(cost: float, backend: str, q, stats: Stats | None = None) -> float:
    """Dense time over sparse time for a call whose sparse path does ``cost`` dense-equivalent block work (the kept
    block fraction, plus planning) on ``backend``; the measured efficiency table turns block work into time."""
    return efficiency(backend, q, stats) / max(cost, 1e-9)


# Copies of the video / text parts and the LSE merge of the split path, in dense-call units (measured on CPU with
# benchmarks/bench_text_blocks.py: the split's time minus its attention parts, a few percent).
SPLIT_OVERHEAD = 0.03


def text_split_cost(cfg, layout, joint_density: float, video_density: float, q) -> float | None:
    """The block work (as ``pays`` takes it) of the text-split path (:func:`~accel.attention_kernels.text_split.
    text_split_attention`) when it is estimated faster than one joint call whose text blocks are dense, else None.

    The split runs the video x video part sparse with its LSE (on CPU flex hands that to the sdpa backend:
    Inductor's flex kernel returns no LSE there) and the text parts on dense kernels (efficiency ~1), so
    it wins when text is a large share of the work (Flux: 512 text tokens on a 4,096-token image) and loses to the
    one call when text is a sliver of a long video.
    """
    if not layout.text_len:
        return None
    video_share = (layout.video_tokens / layout.num_tokens) ** 2
    eff = efficiency(cfg.backend, q)
    lse_backend = "sdpa" if q.device.type == "cpu" and kernel_backend(cfg.backend, q) == "flex" else cfg.backend
    split = video_share * video_density / efficiency(lse_backend, q) + (1 - video_share) + SPLIT_OVERHEAD
    return split * eff if split < joint_density / eff else None


def pays(cfg, cost: float, q, stats: Stats) -> bool:
    """True when sparsity can pay for this call (``cfg.min_speedup``; 0 = always); else counted as
    ``dense:not_faster``, so a preset never makes a pipeline slower than dense by its own choice."""
    if cfg.min_speedup <= 0 or estimated_speedup(cost, cfg.backend, q, stats) >= cfg.min_speedup:
        return True
    stats.add("dense", "not_faster")
    return False


@dataclass(frozen=True)
class StaticPlan:
    """How a call with a static mask runs: one block-sparse call over the joint sequence (``video`` None), or the
    text split over ``video``, the video-only mask (:func:`text_split_cost` chose it)."""

    mask: BlockMask  # the joint mask (text rows and columns dense)
    video: BlockMask | None
    cost: float  # block work, as pays() takes it
    density: float  # kept share of the attention map, for the stats
    perm: TokenPermutation | None = None  # the token order the joint mask is in (None: as given)
    video_perm: TokenPermutation | None = None  # the same for the video-only mask

    def run(self, q, k, v, layout, *, scale, backend, return_lse=False, require_keys=True):
        kw = dict(scale=scale, backend=backend, return_lse=return_lse, require_keys=require_keys)
        if self.video is None:
            return permuted_attention(q, k, v, self.mask, self.perm, **kw)
        return text_split_attention(q, k, v, layout, self.video, video_perm=self.video_perm, **kw)


# Moving q, k, v into a mask's token order and the output back, in dense-call units (Sparse-vDiT's estimate).
REORDER_COST = 0.02


def static_plan(cfg, layout, build: Callable[[object], tuple[BlockMask, TokenPermutation | None]], q) -> StaticPlan:
    """The faster of the joint call and the text split for a static mask: ``build(layout)`` gives the mask and the
    token order it is in (None: as given); both cached by layout."""
    joint, perm = build(layout)
    reorder = REORDER_COST if perm is not None else 0.0
    if layout.text_len:
        video, video_perm = build(layout.video_only())
        cost = text_split_cost(cfg, layout, joint.density + reorder, video.density, q)
        if cost is not None:
            share = (layout.video_tokens / layout.num_tokens) ** 2
            cost += reorder if video_perm is not None else 0.0
            return StaticPlan(joint, video, cost, share * video.density + 1 - share, perm, video_perm)
    return StaticPlan(joint, None, joint.density + reorder, joint.density, perm)
