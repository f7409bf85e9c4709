"""Shared test helpers: one tiny-Wan call that every pipeline test uses."""

import torch

# 64x64 px, 17 frames -> 5 latent frames of 4x4 tokens = 80 tokens; 16-token blocks -> 5 blocks per side.
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
    """Render the shared call (``kw`` overrides it) with a fixed seed; returns the output latents."""
    return pipe(generator=torch.Generator().manual_seed(0), **{**CALL, **kw}).frames
