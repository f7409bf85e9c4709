"""The text split of joint attention (attention_kernels/text_split.py) against a dense fp32 token-level oracle, and
the methods' choice between it and one joint call."""

import pytest
import torch
from accel.attention_kernels import BlockMask, TokenLayout, radial_mask
from accel.attention_kernels.text_split import text_split_attention

from accel.methods.base import static_plan


def _oracle(q, k, v, layout, video_mask):
    """fp32 attention with token mask: text rows and columns whole, video x video as ``video_mask`` keeps."""
    n, vs = layout.num_tokens, layout.video_slice
    allowed = torch.ones(n, n, dtype=torch.bool)
    allowed[vs, vs] = video_mask.token_mask(layout.video_tokens, layout.video_tokens)[0, 0]
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * q.shape[-1] ** -0.5
    s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, -1)
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v.double()), lse


@pytest.mark.parametrize("text_pos", ["first", "last"])
@pytest.mark.parametrize("backend", ["gather", "reference"])
def test_split_equals_the_token_oracle(text_pos, backend):
    layout = TokenLayout(3, 5, 7, 21, text_pos)  # 105 video tokens, 21 text: ragged at 16-token blocks
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, layout.num_tokens, 2, 16, generator=g) for _ in range(3))
    video_mask = radial_mask(layout.video_only(), 16, 0.5)
    want, want_lse = _oracle(q, k, v, layout, video_mask)
    out = text_split_attention(q, k, v, layout, video_mask, backend=backend, require_keys=True)
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=1e-5)
    out, lse = text_split_attention(q, k, v, layout, video_mask, backend=backend, return_lse=True)
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, atol=2e-5, rtol=1e-5)


def test_split_needs_text():
    layout = TokenLayout(2, 4, 4)
    q = torch.randn(1, 32, 1, 16)
    with pytest.raises(ValueError, match="needs a layout with text"):
        text_split_attention(q, q, q, layout, BlockMask.full(2, 2, 16))


@pytest.mark.parametrize(
    "layout,split",
    [
        (TokenLayout(1, 64, 64, 512, "first"), True),  # Flux 1024: text is 21% of the attention map
        (TokenLayout(21, 30, 52, 256, "last"), False),  # a long video: text is 1.6%
    ],
)
def test_the_split_is_chosen_where_it_is_estimated_faster(layout, split):
    """Radial and Re-ttention both plan through methods/base.static_plan; measured side by side in
    benchmarks/results/text_blocks_cpu.md (the Flux-like image: split 0.60x the time of one call with flex)."""
    from accel.config import RettentionConfig
    from accel.methods.rettention import RettentionMethod

    cfg = RettentionConfig().with_defaults({})  # auto: flex on CPU
    method = RettentionMethod(cfg)
    q = torch.empty(1, layout.num_tokens, 1, 64)
    plan = static_plan(cfg, layout, lambda lay: method.plan_mask(lay, "cpu"), q)
    assert (plan.video is not None) == split
    if split:  # reported density: the kept share of the map, text whole
        share = (layout.video_tokens / layout.num_tokens) ** 2
        assert plan.density == pytest.approx(share * plan.video.density + 1 - share)


@pytest.mark.parametrize("backend", ["reference", "gather"])
@pytest.mark.parametrize("text", [0, 10])
def test_every_frame_window_runs_in_position_order_and_returns_the_original_order(backend, text):
    """Re-ttention with its window in every frame (CogVideoX's published mask) plans on the position-major order
    when that keeps fewer blocks; q, k, v go in and come out in the original order, LSE included."""
    from accel.attention_kernels.sparse_vdit import position_major_permutation

    from accel.config import RettentionConfig
    from accel.methods.rettention import RettentionMethod

    layout = TokenLayout(6, 4, 8, text, "first" if text else "none")  # 192 video tokens; 16-token blocks
    cfg = RettentionConfig(window_tokens=2, window_frames=-1, block_size=16, backend=backend, min_speedup=0)
    method = RettentionMethod(cfg.with_defaults({}))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, layout.num_tokens, 2, 16, generator=g) for _ in range(3))
    plan = static_plan(method.config, layout, lambda lay: method.plan_mask(lay, "cpu"), q)
    assert plan.perm is not None and plan.mask.density < method.mask_for(layout, "cpu").density
    if plan.video is None:  # one joint call in position order
        slots = position_major_permutation(layout).slots
        allowed = plan.mask.token_mask(layout.num_tokens, layout.num_tokens)[0, 0][slots][:, slots]
    else:  # the text split (chosen with text here), its video part in position order
        assert plan.video_perm is not None
        n, vs = layout.video_tokens, layout.video_slice
        slots = position_major_permutation(layout.video_only()).slots
        allowed = torch.ones(layout.num_tokens, layout.num_tokens, dtype=torch.bool)
        allowed[vs, vs] = plan.video.token_mask(n, n)[0, 0][slots][:, slots]
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * 16**-0.5
    s = s.masked_fill(~allowed, float("-inf"))
    want = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v.double())
    out, lse = plan.run(q, k, v, layout, scale=None, backend=backend, return_lse=True)
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), torch.logsumexp(s, -1), atol=2e-5, rtol=1e-5)
