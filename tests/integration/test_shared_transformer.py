"""Pipelines sharing one transformer: acceleration belongs to the pipeline object it was applied to.

The two documented diffusers ways to share a model (``from_pipe`` and ``Pipeline(**pipe.components)``) must not
let one pipeline's acceleration reach the other; each may be accelerated on its own, and ``disable`` restores each.
"""

import types

import pytest
import torch
from diffusers import WanPipeline

import accel
from accel import accelerate, disable, is_accelerated
from tests.helpers import run
from tests.integration.test_wan_radial import SMALL, _pristine

SHARING = {
    "from_pipe": lambda pipe: WanPipeline.from_pipe(pipe),
    "components": lambda pipe: WanPipeline(**pipe.components),
}


@pytest.mark.parametrize("share", list(SHARING))
def test_shared_transformer_accelerates_only_its_pipeline(wan, share):
    pipe, ref = wan
    other = SHARING[share](pipe)
    assert other.transformer is pipe.transformer
    accelerate(pipe, "radial", **SMALL)
    try:
        assert is_accelerated(pipe) and not is_accelerated(other)
        assert type(pipe).__name__ == "WanPipeline" and isinstance(pipe, WanPipeline)
        sparse = run(pipe)
        assert not torch.equal(sparse, ref)
        before = accel.stats(pipe)["sparse"]
        assert torch.equal(run(other), ref)  # the plain pipeline stays plain
        assert accel.stats(pipe)["sparse"] == before  # and its calls are not counted as ours

        accelerate(other, "radial", **SMALL)  # its own acceleration, on the same transformer
        try:
            assert torch.equal(run(other), sparse)
            assert torch.equal(run(pipe), sparse)
        finally:
            disable(other)
        assert torch.equal(run(other), ref)
        assert torch.equal(run(pipe), sparse)
    finally:
        disable(pipe)
    _pristine(pipe)
    assert type(pipe) is WanPipeline
    assert torch.equal(run(pipe), ref) and torch.equal(run(other), ref)


def test_two_presets_on_one_shared_transformer(wan):
    pipe, ref = wan
    other = WanPipeline.from_pipe(pipe)
    accelerate(pipe, "radial", **SMALL)
    accelerate(other, "radial", dense_step_fraction=1.0, **SMALL)  # all steps dense: bit-identical to ref
    try:
        assert torch.equal(run(other), ref)
        assert not torch.equal(run(pipe), ref)
        assert accel.stats(other).get("sparse", 0) == 0
    finally:
        disable(pipe)
        disable(other)
    _pristine(pipe)


def test_holder_that_is_not_a_pipeline_owns_the_transformer_outright(wan):
    pipe, ref = wan
    holder = types.SimpleNamespace(transformer=pipe.transformer)
    accelerate(holder, "radial", **SMALL)
    try:
        with pytest.raises(RuntimeError, match="already accelerated through another SimpleNamespace"):
            accelerate(pipe, "radial", **SMALL)
        assert not is_accelerated(pipe)
    finally:
        disable(holder)
    accelerate(pipe, "radial", **SMALL)
    try:
        with pytest.raises(RuntimeError, match="already accelerated through another WanPipeline"):
            accelerate(types.SimpleNamespace(transformer=pipe.transformer), "radial")
    finally:
        disable(pipe)
    _pristine(pipe)
    assert torch.equal(run(pipe), ref)


def test_direct_transformer_calls_follow_running(wan):
    pipe, _ = wan
    accelerate(pipe, "radial", dense_step_fraction=0.0, dense_layers=0, **SMALL)
    x = torch.randn(1, 16, 5, 8, 8)
    kw = dict(timestep=torch.tensor([500.0]), encoder_hidden_states=torch.randn(1, 16, 32), return_dict=False)
    try:
        with torch.no_grad():
            plain = pipe.transformer(x, **kw)[0]  # outside the pipeline's call: the original transformer
            assert accel.stats(pipe).get("sparse", 0) == 0
            with accel.running(pipe):
                fast = pipe.transformer(x, **kw)[0]
        assert accel.stats(pipe)["sparse"] == 2
        assert not torch.equal(plain, fast)
    finally:
        disable(pipe)
    with pytest.raises(ValueError, match="not accelerated"), accel.running(pipe):
        pass


def test_garbage_collected_pipeline_releases_a_shared_transformer(wan):
    import gc

    pipe, ref = wan
    other = WanPipeline.from_pipe(pipe)
    accelerate(other, "radial", **SMALL)
    del other
    gc.collect()
    _pristine(pipe)
    assert torch.equal(run(pipe), ref)
