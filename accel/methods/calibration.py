"""Sparse-vDiT's offline search for one attention pattern per (layer, head): the measuring method and the choice.

:func:`accel.calibration.calibrate` (``accel.calibrate``) runs dense generations on a few prompts with
:class:`Calibrator` installed. At every self-attention call that the preset would make sparse (after the
dense warm-up steps and first layers) each candidate pattern's output is compared with the dense output, per head:
squared L2 errors are accumulated over calls, prompts and guidance branches, per step bucket. A head's error is
``sqrt(err_h / (|O|^2 / H))``: its L2 error relative to the mean energy of one head of the layer's output ``O``.
So when every head stays within ``tolerance``, the whole layer's relative L2 error does too; and ``skip`` (error
``|O_h|`` on that scale) wins for heads whose output is small. For each (layer, head, bucket) the cheapest
candidate within ``tolerance`` wins. Cost is the
candidate's kept-block fraction times a per-pattern efficiency factor (``cost_model="flops"``) or its measured kernel
time relative to a full-mask launch on this device (``"measured"``). ``full`` (error 0) always qualifies.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from accel.attention_kernels.sparse_vdit import (
    HeadPattern,
    pattern_density,
    sparse_vdit_attention,
    stripe_columns,
)

from ..config import SparseVDiTConfig
from ..state import LayerKey, Stats, StepInfo
from . import register_method
from .base import MethodBase, dense_steps, kernel_backend, runs_dense
from .sparse_vdit import Plan, plan_grid

# Relative cost of one kept block per pattern (flops cost model): permutation and irregular column access cost extra.
EFFICIENCY = {"full": 1.0, "diagonal": 1.0, "stripe": 1.1, "multidiagonal": 1.15, "skip": 0.0}


def default_widths(num_blocks: int) -> tuple[int, ...]:
    """Band half-widths (blocks) to try: powers of two below a quarter of the sequence, at least 1."""
    out, w = [], 1
    while w < max(2, num_blocks // 4 + 1):
        out.append(w)
        w *= 2
    return tuple(out)


@dataclass
class _Acc:
    err: torch.Tensor  # [C, H] summed squared error per candidate and head
    norm: torch.Tensor  # [H] summed squared dense output


@dataclass(frozen=True)
class CalibrationConfig(SparseVDiTConfig):
    """Sparse-vDiT's settings plus the search's: installing it makes every sparse call a measurement.

    ``widths``: band half-widths to try (None: :func:`default_widths`); ``stripe_blocks``: key blocks of a stripe
    besides its band (None: 1/16 of the blocks); ``sample_rows``: query rows sampled per call to find stripe
    columns; ``step_buckets``: ranges of the sparse steps that get their own patterns.
    """

    widths: tuple[int, ...] | None = None
    stripe_blocks: int | None = None
    sample_rows: int = 64
    step_buckets: int = 1
    seed: int = 0


@register_method(CalibrationConfig)
class Calibrator(MethodBase):
    """An attention "method" that returns the dense output and measures every candidate against it."""

    name = "sparse-vdit-calibration"
    config: CalibrationConfig

    def __init__(self, config: CalibrationConfig, models: dict[str, dict]):
        super().__init__(config, models)
        self.gen = torch.Generator().manual_seed(config.seed)
        self.acc: dict[tuple[str, int, int], _Acc] = {}  # (transformer, layer, bucket)
        self.column_mass: dict[tuple[str, int], torch.Tensor] = {}  # [H, KB]
        self.heads: dict[tuple[str, int], int] = {}
        self.layout = None
        self.num_steps = None
        self.shape = None

    def requires_full(self, step_index, num_steps):
        return True

    def stripe_count(self, num_blocks: int) -> int:
        return self.config.stripe_blocks or max(1, num_blocks // 16)

    def candidates(self, num_blocks: int, columns: tuple[tuple[int, ...], ...]) -> list[list[HeadPattern]]:
        """Per candidate, the pattern of each head (stripe columns differ per head)."""
        widths = self.config.widths or default_widths(num_blocks)
        out = []
        for kind in ("diagonal", "multidiagonal"):
            out += [[HeadPattern(kind, w)] * len(columns) for w in widths]
        out += [[HeadPattern("stripe", w, cols) for cols in columns] for w in widths[:2]]
        return out

    def _columns(self, q, k, scale, num_blocks: int, key) -> tuple[tuple[int, ...], ...]:
        """Key blocks with the most softmax mass for sampled query rows, per head (accumulated for the plan)."""
        B, S, H, D = q.shape
        rows = torch.randperm(S, generator=self.gen)[: self.config.sample_rows].to(q.device)
        logits = torch.einsum("brhd,bshd->bhrs", q[:, rows].float(), k.float()) * scale
        probs = logits.softmax(-1).mean(dim=(0, 2))  # [H, S]
        bs = self.config.block_size
        padded = torch.nn.functional.pad(probs, (0, num_blocks * bs - S))
        mass = padded.view(H, num_blocks, bs).sum(-1).cpu()
        before = self.column_mass.get(key)
        # Prompts with different real text lengths give different block counts (text first shifts the video): the
        # plan's stripes come from the calls of the first length seen.
        if before is None or before.shape == mass.shape:
            self.column_mass[key] = mass if before is None else before + mass
        return tuple(stripe_columns(mass[h], self.stripe_count(num_blocks)) for h in range(H))

    def attend(self, q, k, v, step: StepInfo, layer: LayerKey, scale, stats: Stats):
        cfg = self.config
        if step.num_heads is not None:
            # A plan holds every head of every layer; a call with a subset of heads (context parallelism) would
            # record a plan of the wrong width.
            raise ValueError("calibrate() runs in one process: disable context parallelism while calibrating")
        if runs_dense(cfg, step, layer, stats):
            return None
        if self.layout is None:
            self.layout, self.num_steps = step.layout, step.num_steps
        elif (plan_grid(step.layout), step.num_steps) != (plan_grid(self.layout), self.num_steps):
            raise ValueError(
                "calibrate() saw calls with different token grids or step counts; calibrate one resolution, frame "
                "count and step count at a time"
            )
        self.shape = tuple(q.shape)
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        H = q.shape[2]
        num_blocks = math.ceil(step.layout.num_tokens / cfg.block_size)
        key = (layer.transformer, layer.index)
        self.heads[key] = H
        columns = self._columns(q, k, scale, num_blocks, key)
        dense = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale
        ).transpose(1, 2)
        ref = dense.float()
        cands = self.candidates(num_blocks, columns)
        bucket = _bucket_of(self.config.step_buckets, step.step_index, step.num_steps, cfg)
        acc = self.acc.get((layer.transformer, layer.index, bucket))
        if acc is None:
            acc = self.acc[(layer.transformer, layer.index, bucket)] = _Acc(torch.zeros(len(cands), H), torch.zeros(H))
        backend, bs = kernel_backend(cfg.backend, q), cfg.block_size
        for i, pats in enumerate(cands):
            out = sparse_vdit_attention(q, k, v, step.layout, pats, block_size=bs, scale=scale, backend=backend)
            acc.err[i] += (out.float() - ref).pow(2).sum(dim=(0, 1, 3)).cpu()
        acc.norm += ref.pow(2).sum(dim=(0, 1, 3)).cpu()
        stats.add("dense", "calibration")
        return dense


def _sparse_range(num_steps: int, cfg: SparseVDiTConfig) -> tuple[int, int]:
    return dense_steps(cfg.dense_step_fraction, num_steps), num_steps


def _bucket_of(buckets: int, step_index: int, num_steps: int | None, cfg) -> int:
    start, stop = _sparse_range(num_steps or 50, cfg)
    span = max(1, stop - start)
    return min(buckets - 1, max(0, (step_index - start) * buckets // span))


def _bucket_ranges(buckets: int, num_steps: int, cfg) -> list[tuple[int, int]]:
    start, stop = _sparse_range(num_steps, cfg)
    span = max(1, stop - start)
    edges = [start + math.ceil(i * span / buckets) for i in range(buckets)] + [stop]
    return [(edges[i], edges[i + 1]) for i in range(buckets)]


def _measured_costs(cal: Calibrator, layout, device, dtype, backend, repeats: int = 3) -> dict[tuple, float]:
    """Kernel time of each candidate (all heads one pattern) relative to a full-mask launch, on random inputs."""
    B, S, H, D = cal.shape
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, S, H, D, generator=g).to(device, dtype) for _ in range(3))
    num_blocks = math.ceil(layout.num_tokens / cal.config.block_size)
    cols = tuple(range(min(cal.stripe_count(num_blocks), num_blocks)))
    bs = cal.config.block_size

    def timed(pattern: HeadPattern) -> float:
        pats = [pattern] * H
        sparse_vdit_attention(q, k, v, layout, pats, block_size=bs, backend=backend)  # warm-up / compile
        best = math.inf
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            sparse_vdit_attention(q, k, v, layout, pats, block_size=bs, backend=backend)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        return best

    full = timed(HeadPattern("full"))
    costs = {}
    for pats in cal.candidates(num_blocks, (cols,)):
        p = pats[0]
        costs[(p.kind, p.width)] = timed(HeadPattern(p.kind, p.width, cols if p.kind == "stripe" else ())) / full
    return costs


def choose_plan(cal: Calibrator, models, tolerance, cost_model, probe, prompt_names) -> Plan:
    """The plan from what ``cal`` measured (:func:`accel.calibration.calibrate` drives the runs). ``probe``: a
    tensor on the device / dtype to time kernels with."""
    cfg = cal.config
    layout, num_steps = cal.layout, cal.num_steps
    num_blocks = math.ceil(layout.num_tokens / cfg.block_size)
    measured = None
    if cost_model == "measured":
        backend = kernel_backend(cfg.backend, probe)
        measured = _measured_costs(cal, layout, probe.device, probe.dtype, backend)
    patterns: dict[str, dict[int, list[tuple[HeadPattern, ...]]]] = {}
    errors: dict[str, dict[str, list[list[float]]]] = {}
    kinds: dict[str, int] = {}
    flops = []
    for (tname, layer), H in sorted(cal.heads.items()):
        mass = cal.column_mass[(tname, layer)]
        columns = tuple(stripe_columns(mass[h], cal.stripe_count(num_blocks)) for h in range(H))
        cands = cal.candidates(num_blocks, columns)
        per_bucket, err_bucket = [], []
        for b in range(cal.config.step_buckets):
            acc = cal.acc.get((tname, layer, b))
            if acc is None:  # no call fell in this bucket (short runs): reuse the nearest measured one
                acc = next(
                    cal.acc[(tname, layer, o)]
                    for o in sorted(range(cal.config.step_buckets), key=lambda o: abs(o - b))
                    if (tname, layer, o) in cal.acc
                )
            head_energy = acc.norm.sum().clamp_min(1e-30) / H  # mean squared norm of one head's output
            rel = (acc.err / head_energy).sqrt()  # [C, H]
            skip_err = (acc.norm / head_energy).sqrt()  # [H]
            heads, errs = [], []
            for h in range(H):
                options = [(1.0, 0.0, HeadPattern("full"))]
                if float(skip_err[h]) <= tolerance:
                    options.append((0.0, float(skip_err[h]), HeadPattern("skip")))
                for c, pats in enumerate(cands):
                    e = float(rel[c, h])
                    if e <= tolerance:
                        p = pats[h]
                        cost = (
                            measured[(p.kind, p.width)]
                            if measured
                            else pattern_density(p, layout, cfg.block_size) * EFFICIENCY[p.kind]
                        )
                        options.append((cost, e, p))
                cost, e, best = min(options, key=lambda o: (o[0], o[1]))
                heads.append(best)
                errs.append(round(e, 6))
                kinds[best.kind] = kinds.get(best.kind, 0) + 1
                flops.append(0.0 if best.kind == "skip" else pattern_density(best, layout, cfg.block_size))
            per_bucket.append(tuple(heads))
            err_bucket.append(errs)
        patterns.setdefault(tname, {})[layer] = per_bucket
        errors.setdefault(tname, {})[str(layer)] = err_bucket
    meta = {
        "tolerance": tolerance,
        "cost_model": cost_model,
        "measured_costs": {f"{k}:{w}": round(c, 4) for (k, w), c in measured.items()} if measured else None,
        "dense_step_fraction": cfg.dense_step_fraction,
        "dense_layers": cfg.dense_layers,
        "prompts": prompt_names,
        "pattern_counts": kinds,
        "mean_kept_fraction": sum(flops) / len(flops),
        "head_errors": errors,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    buckets = _bucket_ranges(cal.config.step_buckets, num_steps, cfg)
    return Plan(models, layout, num_steps, cfg.block_size, buckets, patterns, meta)


class LayerSearch:
    """The calibration search on given attention inputs of one layer instead of a pipeline run (the fidelity
    benchmark uses it on synthetic inputs): errors are measured once, :meth:`choose` picks for any tolerance."""

    def __init__(
        self,
        samples: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        layout,
        *,
        block_size: int = 128,
        widths: Iterable[int] | None = None,
        stripe_blocks: int | None = None,
        sample_rows: int = 64,
        backend: str = "auto",
    ):
        cfg = CalibrationConfig(
            dense_step_fraction=0.0,
            dense_layers=0,
            block_size=block_size,
            backend=backend,
            widths=tuple(widths) if widths else None,
            stripe_blocks=stripe_blocks,
            sample_rows=sample_rows,
        )
        self.cal = Calibrator(cfg, {"transformer": {}})
        self.probe = None
        stats = Stats()
        for q, k, v in samples:  # q/k/v [B, S, H, D]
            self.cal.attend(q, k, v, StepInfo(0, 1, "default", layout), LayerKey("transformer", 0), None, stats)
            self.probe = q
        if self.probe is None:
            raise ValueError("LayerSearch needs at least one (q, k, v) sample")

    def choose(self, tolerance: float, cost_model: str = "flops") -> tuple[tuple[HeadPattern, ...], list[float]]:
        """The chosen pattern and its error per head."""
        plan = choose_plan(self.cal, {"transformer": {}}, tolerance, cost_model, self.probe, [])
        return plan.patterns["transformer"][0][0], plan.meta["head_errors"]["transformer"]["0"][0]
