"""Shared test helpers: one tiny-Wan call that every pipeline test uses."""

import torch
from accel.pipelines.wan import WAN

# The Wan family's tiny call (pipelines/wan.py): 64x64 px, 17 frames -> 5 latent frames of 4x4 tokens = 80 tokens;
# 16-token blocks -> 5 blocks per side.
CALL = dict(WAN.tiny_call)


def run(pipe, **kw):
    """Render the shared call (``kw`` overrides it) with a fixed seed; returns the output latents."""
    return pipe(generator=torch.Generator().manual_seed(0), **{**CALL, **kw}).frames
