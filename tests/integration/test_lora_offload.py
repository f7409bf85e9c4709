"""LoRA (``load_lora_weights``) and ``enable_model_cpu_offload`` with an accelerated tiny Wan pipeline, eager and
compiled: the plugin's hooks sit on the attention modules and the transformer, LoRA wraps the linear layers inside
them and offload hooks whole components, so they compose in either order.

On this CPU-only machine offload's execution device is the CPU (``enable_model_cpu_offload(device="cpu")``): the
hooks and the device moves are exercised, not a GPU. A test LoRA is made with peft, saved with
``save_lora_weights`` and loaded back the way users load one from a file.
"""

import pytest
import torch

import accel
from accel.testing import tiny_wan_pipeline
from tests.helpers import run

SPARSE = dict(block_size=16, min_speedup=0, backend="gather", dense_step_fraction=0.2, dense_layers=0)


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    pytest.importorskip("peft", reason="diffusers' LoRA loading needs peft (installed with the dev extras)")
    from diffusers import WanPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    src = tiny_wan_pipeline(seed=1)
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    src.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False))
    folder = tmp_path_factory.mktemp("lora")
    WanPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(src.transformer))
    return folder


def _lora_pipe(lora_dir):
    pipe = tiny_wan_pipeline()
    pipe.load_lora_weights(lora_dir)
    return pipe


def test_lora_before_or_after_accelerate(lora_dir):
    pipe = _lora_pipe(lora_dir)
    ref = run(pipe)
    assert not torch.equal(ref, run(tiny_wan_pipeline()))  # the LoRA changes the model
    accel.accelerate(pipe, "radial", dense_step_fraction=1.0, block_size=16)
    try:
        assert torch.equal(run(pipe), ref)  # every step dense: exactly the LoRA'd pipeline
    finally:
        accel.disable(pipe)
    accel.accelerate(pipe, "radial", **SPARSE)
    try:
        sparse = run(pipe)
        assert accel.stats(pipe)["sparse"] > 0
    finally:
        accel.disable(pipe)
    assert torch.equal(run(pipe), ref)

    late = tiny_wan_pipeline()
    accel.accelerate(late, "radial", **SPARSE)
    late.load_lora_weights(lora_dir)  # LoRA loaded into an accelerated pipeline
    try:
        assert torch.equal(run(late), sparse)
    finally:
        accel.disable(late)
    assert torch.equal(run(late), ref)


def test_cpu_offload_before_or_after_accelerate():
    ref = run(tiny_wan_pipeline())
    pipe = tiny_wan_pipeline()
    pipe.enable_model_cpu_offload(device="cpu")
    accel.accelerate(pipe, "radial+taylorseer", interval=2, threshold=None, **SPARSE)
    try:
        out = run(pipe)
        s = accel.stats(pipe)
        assert s["sparse"] > 0 and s["cache:predicted"] > 0
    finally:
        accel.disable(pipe)
    assert torch.equal(run(pipe), ref)

    first = tiny_wan_pipeline()
    accel.accelerate(first, "radial+taylorseer", interval=2, threshold=None, **SPARSE)
    first.enable_model_cpu_offload(device="cpu")
    try:
        assert torch.equal(run(first), out)
    finally:
        accel.disable(first)


def test_compiled_with_lora_and_offload(lora_dir):
    """LoRA loaded, CPU offload on, accelerated, then regionally compiled: the eager accelerated output."""
    from accel.cli.runner import compile_denoisers

    eager = _lora_pipe(lora_dir)
    accel.accelerate(eager, "radial", **SPARSE)
    ref = run(eager, num_inference_steps=3)

    pipe = _lora_pipe(lora_dir)
    pipe.enable_model_cpu_offload(device="cpu")
    accel.accelerate(pipe, "radial", **SPARSE)
    torch._dynamo.reset()
    try:
        compile_denoisers(pipe, backend="aot_eager")
        out = run(pipe, num_inference_steps=3)
    finally:
        torch._dynamo.reset()
    assert (out - ref).abs().max() < 2e-5
    assert accel.stats(pipe)["sparse"] == accel.stats(eager)["sparse"] > 0
