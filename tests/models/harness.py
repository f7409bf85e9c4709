"""The checks every supported family passes on its tiny offline pipeline (``ModelSpec.tiny_pipeline`` called with
``ModelSpec.tiny_call``): one module per family imports :func:`family_tests` and gets the whole set.

- every-step-dense (each attention preset with its whole schedule dense, TaylorSeer computing every step) is
  bit-identical to the untouched pipeline: the hooks and routers change nothing they do not mean to;
- every preset runs with sparse calls or cache predictions really counted, finite output;
- ``disable`` restores the untouched pipeline bit for bit.

Sparse settings for tiny sequences: 16-token blocks, no speed gate (``min_speedup=0``) and the CPU gather
backend (a real block-sparse kernel that needs no compilation, so the suite stays fast).
"""

from __future__ import annotations

import pytest
import torch
from accel.pipelines import supported_specs

import accel

SMALL = dict(block_size=16, min_speedup=0, backend="gather")
# Per preset: overrides that make sparse calls happen on a few tiny steps (warm-up short, first layer sparse too).
SPARSE = {
    "radial": dict(dense_step_fraction=0.2, dense_layers=0, **SMALL),
    "draft": dict(dense_step_fraction=0.2, dense_layers=0, patch=(4, 4), sparsity=0.5, **SMALL),
    "rettention": dict(dense_step_fraction=0.2, dense_layers=0, **SMALL),
    "sparse-vdit": dict(dense_step_fraction=0.2, dense_layers=0, **SMALL),
    "taylorseer": dict(interval=2, warmup_steps=1),
    "radial+taylorseer": dict(dense_step_fraction=0.2, dense_layers=0, interval=2, warmup_steps=1, **SMALL),
}
ALL_DENSE = {
    "radial": dict(dense_step_fraction=1.0, **SMALL),
    "draft": dict(dense_step_fraction=1.0, patch=(4, 4), **SMALL),
    "rettention": dict(dense_step_fraction=1.0, **SMALL),
    "taylorseer": dict(interval=1),
}


def spec_named(name: str):
    (spec,) = [s for s in supported_specs() if s.name == name]
    return spec


def output(result) -> torch.Tensor:
    """The latents a pipeline call returned (video pipelines: ``frames``, image pipelines: ``images``)."""
    for attr in ("frames", "images"):
        value = getattr(result, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    raise AssertionError(f"no latent output in {type(result).__name__}")


def call(pipe, spec, **kw):
    return output(pipe(generator=torch.Generator().manual_seed(0), **{**spec.tiny_call, **kw}))


def accelerated_call(pipe, spec, preset: str, overrides: dict, **kw):
    """``(output, stats)`` of the family's tiny call (``kw`` overrides it) with ``preset`` applied, then disabled."""
    accel.accelerate(pipe, preset, **overrides)
    try:
        return call(pipe, spec, **kw), accel.stats(pipe)
    finally:
        accel.disable(pipe)


def resolved_config(pipe, preset: str):
    """The :class:`~accel.config.AccelConfig` ``accelerate(pipe, preset)`` resolves (the model's defaults filled
    in), read and disabled again."""
    accel.accelerate(pipe, preset)
    try:
        return accel.accel_config(pipe)
    finally:
        accel.disable(pipe)


def family_tests(name: str, presets=None):
    """The shared tests for family ``name`` as module-level names: ``globals().update(family_tests("flux"))``.

    ``presets``: those to run (default: every preset of :data:`SPARSE` the family supports); the others must be
    refused at ``accelerate`` time with a clear error.
    """
    spec = spec_named(name)
    supported = set(accel.supported_presets(spec))
    if presets is None:
        presets = tuple(p for p in SPARSE if set(p.split("+")) <= supported)
    refused = [p for p in SPARSE if not set(p.split("+")) <= supported]

    @pytest.fixture(scope="module")
    def family():
        pipe = spec.tiny_pipeline()
        return pipe, call(pipe, spec)

    @pytest.mark.parametrize("preset", [p for p in ALL_DENSE if p in presets])
    def test_every_step_dense_is_bit_identical(family, preset):
        pipe, ref = family
        accel.accelerate(pipe, preset, **ALL_DENSE[preset])
        try:
            out = call(pipe, spec)
            s = accel.stats(pipe)
        finally:
            accel.disable(pipe)
        assert s.get("sparse", 0) == 0 and s.get("cache:predicted", 0) == 0
        assert s.get("fallback", 0) == 0, s  # every self-attention call was understood
        assert torch.equal(out, ref)

    @pytest.mark.parametrize("preset", presets)
    def test_preset_runs_and_disable_restores(family, preset, tmp_path, monkeypatch):
        pipe, ref = family
        kw = dict(SPARSE[preset])
        if preset == "sparse-vdit":
            monkeypatch.setenv("ACCEL_PLAN_DIR", str(tmp_path))
            rest = {k: v for k, v in spec.tiny_call.items() if k != "prompt"}
            accel.calibrate(pipe, [spec.tiny_call["prompt"]], tolerance=0.6, block_size=16, dense_layers=0,
                            dense_step_fraction=0.2, backend="gather", **rest)  # fmt: skip
        accel.accelerate(pipe, preset, **kw)
        try:
            out = call(pipe, spec)
            s = accel.stats(pipe)
        finally:
            accel.disable(pipe)
        print(f"\n{name} {preset}: {s}")
        assert torch.isfinite(out).all()
        if preset != "taylorseer":
            assert s.get("sparse", 0) > 0, s
            assert s.get("fallback", 0) == 0, s
        if "taylorseer" in preset:
            assert s.get("cache:predicted", 0) > 0, s
        assert torch.equal(call(pipe, spec), ref)

    @pytest.mark.parametrize("preset", refused)
    def test_unsupported_presets_are_refused_clearly(family, preset):
        pipe, _ = family
        with pytest.raises(ValueError, match=f"cannot apply to {name} models: .*use "):
            accel.accelerate(pipe, preset)
        assert not accel.is_accelerated(pipe)

    tests = {"test_unsupported_presets_are_refused_clearly": test_unsupported_presets_are_refused_clearly}
    return {
        **(tests if refused else {}),
        "family": family,
        "test_every_step_dense_is_bit_identical": test_every_step_dense_is_bit_identical,
        "test_preset_runs_and_disable_restores": test_preset_runs_and_disable_restores,
    }
