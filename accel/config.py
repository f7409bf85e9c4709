"""Configuration dataclasses and named presets. Presets are named configs, never code paths."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from accel.attention_kernels.api import BACKENDS

from .errors import ConfigError


def torch_dtype(name: str | None, default=None):
    """The torch dtype a config's storage-dtype name stands for (``default`` for None)."""
    import torch

    return default if name is None else getattr(torch, name)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


BLOCK_SIZE = 128  # tokens per mask block unless a model publishes another (the kernels' tile)


def _fill_unset(cfg, model_defaults: dict[str, Any], generic: dict[str, Any]):
    """``cfg`` with its ``None`` fields set from the model's published defaults, then from generic fallbacks (for a
    model without published numbers); fields the user set are kept. Every attention config's ``block_size`` falls
    back to :data:`BLOCK_SIZE`."""
    generic = {**generic, "block_size": BLOCK_SIZE} if hasattr(cfg, "block_size") else generic
    fill = {**generic, **{k: v for k, v in model_defaults.items() if v is not None}}
    return dataclasses.replace(cfg, **{k: v for k, v in fill.items() if getattr(cfg, k, None) is None})


def _check_gating(cfg) -> None:
    """Checks for the fields every sparse attention config shares (dense warm-up, dense layers, blocks, backend)."""
    _check(
        cfg.dense_step_fraction is None or 0.0 <= cfg.dense_step_fraction <= 1.0,
        f"dense_step_fraction must be in [0, 1] (a fraction of the steps), got {cfg.dense_step_fraction}",
    )
    _check(cfg.dense_layers is None or cfg.dense_layers >= 0, "dense_layers must be >= 0")
    _check(
        cfg.block_size is None or (cfg.block_size >= 16 and cfg.block_size & (cfg.block_size - 1) == 0),
        f"block_size must be a power of two >= 16, got {cfg.block_size}",
    )
    _check(cfg.backend in BACKENDS, f"backend must be one of {BACKENDS}, got {cfg.backend!r}")
    _check(cfg.min_blocks >= 1, "min_blocks must be >= 1")
    _check(
        cfg.min_speedup >= 0,
        f"min_speedup must be >= 0 (0 runs every eligible call sparse), got {cfg.min_speedup}",
    )


@dataclass(frozen=True)
class RadialConfig:
    """Radial attention (static energy-decay mask). ``None`` fields take the model's published default.

    - ``decay``: window decay factor (Wan2.1 0.2, Wan2.2 0.8, HunyuanVideo 0.95).
    - ``dense_step_fraction``: leading fraction of denoising steps run dense (Wan2.1: 12 of 50 = 0.24).
    - ``dense_layers``: the first N self-attention layers always run dense.
    - ``sink``: every frame attends densely to the first latent frame.
    - ``block_size``: tokens per mask block (power of two; 128 matches the kernels' tiles).
    - ``backend``: ``auto`` (the fastest backend in the device's measured efficiency table) | ``triton`` | ``flex`` |
      ``sdpa`` | ``gather`` | ``reference``.
    - ``max_density``: a mask keeping more than this fraction runs dense instead (sparsity would not pay).
    - ``min_blocks``: sequences shorter than this many blocks run dense.
    - ``min_speedup``: a call runs sparse only when the estimated speed-up over dense attention on this backend
      and device, planning and recalibration included, is at least this (1.1; 0 turns the check off). See
      :mod:`accel.methods.base`.
    """

    decay: float | None = None
    dense_step_fraction: float | None = None
    dense_layers: int | None = None
    sink: bool | None = None
    block_size: int | None = None  # None: the model's, else 128 (BLOCK_SIZE)
    backend: str = "auto"
    max_density: float = 0.9
    min_blocks: int = 4
    min_speedup: float = 1.1

    method = "radial"

    def __post_init__(self):
        _check(self.decay is None or self.decay > 0, f"radial decay must be > 0, got {self.decay}")
        _check_gating(self)
        _check(0.0 < self.max_density <= 1.0, "max_density must be in (0, 1]")

    def with_defaults(self, defaults: dict[str, Any]) -> RadialConfig:
        generic = {"decay": 1.0, "dense_step_fraction": 0.24, "dense_layers": 1, "sink": False}
        return _fill_unset(self, defaults, generic)


@dataclass(frozen=True)
class DraftConfig:
    """DraftAttention (dynamic per-head block selection from a pooled low-resolution attention map).

    - ``sparsity``: fraction of (video query patch, video key patch) pairs dropped per head (Wan 0.75, Hunyuan 0.9).
    - ``dense_step_fraction``: leading fraction of steps run dense (published: t > 925 on Wan, about 15 of 50).
    - ``dense_layers``: the first N self-attention layers run dense (Wan: block 0).
    - ``patch``: (rows, cols) of latent tokens pooled into one draft token; rows * cols must equal ``block_size``.
      Frames that do not divide into patches are padded (padding keys are masked), never refused.
    - ``pool_backend``: ``auto`` (Triton on CUDA) | ``triton`` | ``torch`` for the pooling kernel.
    - ``block_size``, ``backend``, ``min_blocks``, ``min_speedup``: as for radial.
    """

    sparsity: float | None = None
    dense_step_fraction: float | None = None
    dense_layers: int | None = None
    patch: tuple[int, int] = (8, 16)
    block_size: int | None = None  # None: the model's, else 128 (BLOCK_SIZE)
    backend: str = "auto"
    pool_backend: str = "auto"
    min_blocks: int = 4
    min_speedup: float = 1.1

    method = "draft"

    def __post_init__(self):
        _check(
            self.sparsity is None or 0.0 <= self.sparsity < 1.0,
            f"draft sparsity must be in [0, 1) (the fraction of patch pairs dropped), got {self.sparsity}",
        )
        _check_gating(self)
        object.__setattr__(self, "patch", tuple(int(x) for x in self.patch))
        _check(
            len(self.patch) == 2 and (self.block_size is None or self.patch[0] * self.patch[1] == self.block_size),
            f"draft patch {self.patch} must be (rows, cols) with rows * cols == block_size ({self.block_size})",
        )
        _check(self.pool_backend in ("auto", "triton", "torch"), "pool_backend must be 'auto', 'triton' or 'torch'")

    def with_defaults(self, defaults: dict[str, Any]) -> DraftConfig:
        return _fill_unset(self, defaults, {"sparsity": 0.75, "dense_step_fraction": 0.3, "dense_layers": 1})


COST_MODELS = ("flops", "measured")


@dataclass(frozen=True)
class SparseVDiTConfig:
    """Sparse-vDiT: a static pattern per (layer, head) chosen offline by :func:`accel.calibrate`.

    - ``plan``: path of the calibration plan (JSON) to use. ``None``: look up the plan matching the model, token
      grid and step count in the plan directory (``$ACCEL_PLAN_DIR``, default ``~/.cache/diffusion-fast/plans``),
      where ``calibrate`` saves by default. A missing or mismatched plan is an error that says how to calibrate.
    - ``dense_step_fraction`` / ``dense_layers``: dense warm-up, as for radial (calibration skips those calls).
    - ``block_size``, ``backend``, ``min_blocks``, ``min_speedup``: as for radial.
    """

    plan: str | None = None
    dense_step_fraction: float | None = None
    dense_layers: int | None = None
    block_size: int | None = None  # None: the model's, else 128 (BLOCK_SIZE)
    backend: str = "auto"
    min_blocks: int = 4
    min_speedup: float = 1.1

    method = "sparse-vdit"

    def __post_init__(self):
        _check_gating(self)

    def with_defaults(self, defaults: dict[str, Any]) -> SparseVDiTConfig:
        return _fill_unset(self, defaults, {"dense_step_fraction": 0.2, "dense_layers": 1})


# Storage dtypes a config may name (None: the tensor's own dtype); accel.config.torch_dtype turns a name into a dtype.
STORAGE_DTYPES = (None, "float32", "bfloat16", "float16")
RESIDUAL_DTYPES = STORAGE_DTYPES


@dataclass(frozen=True)
class RettentionConfig:
    """Re-ttention: a very sparse static mask plus the statistical reshape of its output.

    At recalibration steps attention runs dense and sparse; per query row the share of softmax mass inside the mask
    (``rho``, from the two LSEs) and the residual between dense and reshaped-sparse outputs are cached per (layer,
    guidance branch). At sparse steps the output is ``rho * sparse + residual``.

    - ``window_tokens``: keys within this many tokens of the query's within-frame index are kept ...
    - ``window_frames``: ... in frames at most this far from the query's frame (-1: every frame).
    - ``dense_step_fraction``: leading fraction of steps run dense (published: 15 of 50 CogVideoX, 5 of 20 PixArt).
    - ``recalibrate_every``: a recalibration step every N steps after the warm-up (published: 5 at 50 steps;
      ``None`` scales it to the step count: ``max(2, round(num_steps / 10))``).
    - ``ratio_drift``: added to ``rho`` after every sparse step since the last recalibration (published 0.04).
    - ``reshape``: rescale by ``rho`` (False: the same mask and residual without the reshape).
    - ``residual``: cache and add the residual.
    - ``residual_dtype``: storage dtype of residuals (None: the attention output's dtype).
    - ``residual_layers``: layer indices that keep a residual (None: all); the others still get the reshape.
    - ``dense_layers``, ``block_size``, ``backend``, ``min_blocks``, ``min_speedup``: as for radial.
    """

    window_tokens: int | None = None  # None: the model's published window, else 128
    window_frames: int | None = None  # None: the model's published window, else 1
    dense_step_fraction: float | None = None
    recalibrate_every: int | None = None
    ratio_drift: float = 0.04
    reshape: bool = True
    residual: bool = True
    residual_dtype: str | None = None
    residual_layers: tuple[int, ...] | None = None
    dense_layers: int | None = None
    block_size: int | None = None  # None: the model's, else 128 (BLOCK_SIZE)
    backend: str = "auto"
    min_blocks: int = 4
    min_speedup: float = 1.1

    method = "rettention"

    def __post_init__(self):
        _check(
            self.window_tokens is None or self.window_tokens >= 0,
            f"window_tokens must be >= 0, got {self.window_tokens}",
        )
        _check(
            self.window_frames is None or self.window_frames >= -1,
            f"window_frames must be >= 0 (-1: every frame), got {self.window_frames}",
        )
        _check(
            self.recalibrate_every is None or self.recalibrate_every >= 1,
            f"recalibrate_every must be >= 1, got {self.recalibrate_every}",
        )
        _check(self.ratio_drift >= 0, "ratio_drift must be >= 0")
        _check(self.residual_dtype in RESIDUAL_DTYPES, f"residual_dtype must be one of {RESIDUAL_DTYPES}")
        if self.residual_layers is not None:
            object.__setattr__(self, "residual_layers", tuple(int(i) for i in self.residual_layers))
        _check_gating(self)

    def with_defaults(self, defaults: dict[str, Any]) -> RettentionConfig:
        generic = {"dense_step_fraction": 0.3, "dense_layers": 0, "window_tokens": 128, "window_frames": 1}
        return _fill_unset(self, defaults, generic)

    def recalibration_interval(self, num_steps: int | None) -> int:
        if self.recalibrate_every is not None:
            return self.recalibrate_every
        return max(2, round((num_steps or 50) / 10))


DISTANCES = ("sigma", "timestep", "step")
FACTOR_DTYPES = STORAGE_DTYPES
CACHE_SIGNALS = ("forecast", "change")  # what an adaptive cache schedule decides from (accel.caches.adaptive)


@dataclass(frozen=True)
class TaylorSeerConfig:
    """TaylorSeer-style feature caching. ``None`` fields take the model's published default.

    On full steps the cached modules (per block: self-attention, cross-attention and feed-forward outputs, from the
    model's ModelSpec) run and refresh their values and finite differences up to ``order``; on the other steps their
    outputs are predicted by a Taylor/Newton expansion and the modules do not run at all.

    - ``interval``: TaylorSeer's fresh threshold N: a full step every ``interval`` steps, counted from step
      ``warmup_steps - 1`` (Wan: 5, so 50 steps compute 0, 5, ..., 45 in full, as TaylorSeer-Wan2.1 does).
    - ``order``: highest difference order (0 = reuse the last value; Wan: 1); differences are taken from the full
      steps past ``warmup_steps - 2`` on, as in TaylorSeer.
    - ``warmup_steps``: leading steps always computed (TaylorSeer's first_enhance E; Wan: 1).
    - ``final_full_steps``: trailing steps always computed.
    - ``distance``: what the differences are taken over: ``"sigma"`` (the generic default; falls back to timestep,
      then step index, when a pipeline does not expose sigmas), ``"timestep"``, or ``"step"`` (TaylorSeer's original
      step-index expansion; Wan's adaptive default).
    - ``factor_dtype``: storage dtype of the cached factors (None: the module's output dtype).
    - ``lite``: cache one residual of the whole block stack instead of every module (memory: one tensor per order).
    - ``threshold``: ``"auto"`` (default) takes the model's tuned value (Wan: 0.24; families without one keep the
      fixed schedule), None keeps the fixed schedule above. A number makes it adaptive
      (:mod:`accel.caches.adaptive`): the first ``probe_blocks`` blocks run on every step, and the rest of a step runs
      in full only when the probe's ``signal`` exceeds ``threshold``; ``interval`` then bounds the gap between full
      steps (at most ``interval - 1`` predicted steps in a row). Warm-up, final and attention-required steps stay
      full. Decided per guidance branch, identically on every context-parallel rank. An adaptive schedule takes
      unset fields from the model's adaptive defaults first (Wan: 8 warm-up steps, differences over step index), then
      its published ones.
    - ``signal``: ``"change"`` (default: relative L1 change of the probe since the last full step, FirstBlockCache /
      DBCache style) or ``"forecast"`` (relative L1 error of the probe's own Taylor forecast).
    - ``probe_blocks``: how many leading blocks always run to give the probe (their modules are never cached).
    """

    interval: int | None = None
    order: int | None = None
    warmup_steps: int | None = None
    final_full_steps: int = 0
    distance: str | None = None
    factor_dtype: str | None = None
    lite: bool = False
    threshold: float | str | None = "auto"
    signal: str = "change"
    probe_blocks: int = 1

    method = "taylorseer"

    def __post_init__(self):
        _check(
            self.interval is None or self.interval >= 1, f"interval must be >= 1 (1 = no caching), got {self.interval}"
        )
        _check(self.order is None or self.order >= 0, f"order must be >= 0, got {self.order}")
        _check(self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps must be >= 0")
        _check(self.final_full_steps >= 0, "final_full_steps must be >= 0")
        _check(
            self.distance is None or self.distance in DISTANCES,
            f"distance must be one of {DISTANCES}, got {self.distance!r}",
        )
        _check(self.factor_dtype in FACTOR_DTYPES, f"factor_dtype must be one of {FACTOR_DTYPES}")
        _check(
            self.threshold is None
            or self.threshold == "auto"
            or (isinstance(self.threshold, (int, float)) and self.threshold == self.threshold and self.threshold >= 0),
            f"threshold must be a number >= 0 (adaptive), None (fixed schedule) or 'auto', got {self.threshold!r}",
        )
        _check(self.signal in CACHE_SIGNALS, f"signal must be one of {CACHE_SIGNALS}, got {self.signal!r}")
        _check(self.probe_blocks >= 1, f"probe_blocks must be >= 1, got {self.probe_blocks}")

    def with_defaults(self, defaults: dict[str, Any]) -> TaylorSeerConfig:
        """Unset fields from the model: ``threshold="auto"`` becomes the model's ``adaptive["threshold"]`` (None
        without one: the fixed schedule); an adaptive schedule fills unset fields from ``adaptive`` first."""
        adaptive = dict(defaults.get("adaptive") or {})
        published = {k: v for k, v in defaults.items() if k != "adaptive"}
        threshold = adaptive.pop("threshold", None) if self.threshold == "auto" else self.threshold
        if threshold is not None:
            published = {**published, **adaptive}
        cfg = dataclasses.replace(self, threshold=threshold)
        return _fill_unset(cfg, published, {"interval": 5, "order": 1, "warmup_steps": 1, "distance": "sigma"})


ATTENTION_CONFIGS: dict[str, type] = {
    c.method: c for c in (RadialConfig, DraftConfig, SparseVDiTConfig, RettentionConfig)
}
CACHE_CONFIGS: dict[str, type] = {"taylorseer": TaylorSeerConfig}


@dataclass(frozen=True)
class AccelConfig:
    """What ``accelerate`` installs: an attention method and/or a feature cache (either may be None)."""

    attention: Any = None
    cache: Any = None

    def __post_init__(self):
        if self.attention is not None and not isinstance(self.attention, tuple(ATTENTION_CONFIGS.values())):
            raise TypeError(
                f"attention must be one of {[c.__name__ for c in ATTENTION_CONFIGS.values()]}, "
                f"got {type(self.attention).__name__}"
            )
        if self.cache is not None and not isinstance(self.cache, tuple(CACHE_CONFIGS.values())):
            raise TypeError(f"unsupported cache config {type(self.cache).__name__}")

    @property
    def name(self) -> str:
        parts = [p.method for p in (self.attention, self.cache) if p is not None]
        return "+".join(parts) or "dense"


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    config: AccelConfig = field(default_factory=AccelConfig)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("dense", "no acceleration (the untouched pipeline)", AccelConfig()),
        Preset(
            "radial",
            "Radial Attention: static O(n log n) energy-decay block mask, dense warm-up steps and first layer",
            AccelConfig(attention=RadialConfig()),
        ),
        Preset(
            "draft",
            "DraftAttention: per-head top blocks of a pooled (8x16 patch) attention map, recomputed every call",
            AccelConfig(attention=DraftConfig()),
        ),
        Preset(
            "sparse-vdit",
            "Sparse-vDiT: per-head diagonal/multi-diagonal/stripe/skip patterns from an accel.calibrate() plan",
            AccelConfig(attention=SparseVDiTConfig()),
        ),
        Preset(
            "rettention",
            "Re-ttention: very sparse local mask with the softmax-mass reshape and residual cached at recalibration",
            AccelConfig(attention=RettentionConfig()),
        ),
        Preset(
            "taylorseer",
            "TaylorSeer feature caching: attention/FFN outputs predicted between full steps (compose with '+')",
            AccelConfig(cache=TaylorSeerConfig()),
        ),
    )
}


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description. Presets compose with '+', e.g. ``"radial+taylorseer"``."""
    return {name: p.description for name, p in PRESETS.items()}


def resolve_config(preset: str | AccelConfig, overrides: dict[str, Any]) -> AccelConfig:
    """Turn a preset name (``"a+b"`` composes) or an AccelConfig plus keyword overrides into an AccelConfig."""
    if isinstance(preset, AccelConfig):
        cfg = preset
    elif isinstance(preset, str):
        attention = cache = None
        for part in [p.strip() for p in preset.split("+")]:
            if part not in PRESETS:
                close = difflib.get_close_matches(part, list(PRESETS), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    f"unknown preset {part!r}{hint}; available presets: {', '.join(sorted(PRESETS))} "
                    "(combine an attention method and a cache with '+', e.g. radial+taylorseer)"
                )
            sub = PRESETS[part].config
            if sub.attention is not None:
                if attention is not None:
                    raise ConfigError(f"preset {preset!r} combines two attention methods; pick one")
                attention = sub.attention
            if sub.cache is not None:
                if cache is not None:
                    raise ConfigError(f"preset {preset!r} combines two caches; pick one")
                cache = sub.cache
        cfg = AccelConfig(attention=attention, cache=cache)
    else:
        raise TypeError(f"preset must be a preset name or an AccelConfig, got {type(preset).__name__}")
    if not overrides:
        return cfg
    targets = [c for c in (cfg.attention, cfg.cache) if c is not None]
    remaining = dict(overrides)
    new = {}
    for part in targets:
        names = {f.name for f in dataclasses.fields(part)}
        mine = {k: remaining.pop(k) for k in list(remaining) if k in names}
        new[id(part)] = dataclasses.replace(part, **mine) if mine else part
    if remaining:
        valid = sorted({f.name for c in targets for f in dataclasses.fields(c)})
        raise ConfigError(
            f"unknown parameter(s) {sorted(remaining)} for preset {cfg.name!r}; valid parameters: {valid}"
        )
    return AccelConfig(attention=new.get(id(cfg.attention), cfg.attention), cache=new.get(id(cfg.cache), cfg.cache))
