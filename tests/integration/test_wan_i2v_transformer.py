"""Wan I2V transformer (image-context cross-attention): only attn1 goes sparse, attn2 and its image branch stay."""

import types

import torch

import accel
from accel.testing import tiny_wan_transformer


def test_i2v_transformer_routes_only_self_attention():
    torch.manual_seed(0)
    t = tiny_wan_transformer(head_dim=16, in_channels=36, image_dim=24).eval()
    pipe = types.SimpleNamespace(transformer=t)  # a pipeline-like holder: accelerate only needs .transformer
    x = torch.randn(1, 36, 5, 8, 8)
    kw = dict(
        timestep=torch.tensor([500.0]),
        encoder_hidden_states=torch.randn(1, 512, 32),
        encoder_hidden_states_image=torch.randn(1, 4, 24),
        return_dict=False,
    )
    with torch.no_grad():
        ref = t(x, **kw)[0]
        accel.accelerate(pipe, "radial", block_size=16, dense_layers=0, dense_step_fraction=0.0, min_speedup=0)
        try:
            out = t(x, **kw)[0]
            s = accel.stats(pipe)
        finally:
            accel.disable(pipe)
        back = t(x, **kw)[0]
    assert s["sparse"] == 2 and s.get("fallback", 0) == 0  # attn1 of both blocks; attn2 never routed
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    assert torch.equal(back, ref)
