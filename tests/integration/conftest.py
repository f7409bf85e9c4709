import pytest
import torch

from accel.tiny import tiny_wan_pipeline

# 64x64 px, 17 frames -> 5 latent frames of 4x4 tokens = 80 tokens; block 16 -> 5 blocks per side.
CALL = dict(
    prompt="w3 w4 w5",
    negative_prompt="w6",
    num_inference_steps=6,
    height=64,
    width=64,
    num_frames=17,
    max_sequence_length=16,
    guidance_scale=5.0,
    output_type="latent",
)


def run(pipe, **kw):
    args = {**CALL, **kw}
    return pipe(generator=torch.Generator().manual_seed(0), **args).frames


@pytest.fixture(scope="module")
def wan():
    pipe = tiny_wan_pipeline()
    return pipe, run(pipe)
