"""Sparse-vDiT head patterns: permutation, block masks and grouped attention against brute-force oracles."""

import math

import pytest
import torch
from accel.attention_kernels import TokenLayout
from accel.attention_kernels.sparse_vdit import (
    PATTERN_KINDS,
    HeadPattern,
    head_block_mask,
    pattern_block_mask,
    pattern_density,
    position_major_permutation,
    sparse_vdit_attention,
    stripe_columns,
)

LAYOUTS = [
    TokenLayout(3, 2, 3),
    TokenLayout(4, 3, 5, 7, "first"),
    TokenLayout(2, 4, 4, 5, "last"),
    TokenLayout(1, 3, 3, 2, "first"),
    TokenLayout(5, 3, 7, 20, "last"),
]


def _ids(layouts):
    return [f"f{x.frames}_{x.height}x{x.width}_text{x.text_len}{x.text_pos}" for x in layouts]


def loop_position_order(layout):
    """Original token of each slot in the position-major order, built with plain loops."""
    text = list(range(layout.text_slice.start, layout.text_slice.stop)) if layout.text_len else []
    start, s = layout.video_start, layout.tokens_per_frame
    video = [start + t * s + p for p in range(s) for t in range(layout.frames)]
    return text + video if layout.text_pos == "first" else video + text


def brute_block_mask(pattern, layout, bs):
    """Pattern block mask from explicit loops over blocks of the pattern's own token order."""
    n = math.ceil(layout.num_tokens / bs)
    order = loop_position_order(layout) if pattern.kind == "multidiagonal" else list(range(layout.num_tokens))
    text = set(range(layout.text_slice.start, layout.text_slice.stop)) if layout.text_len else set()
    text_blocks = {slot // bs for slot, tok in enumerate(order) if tok in text}
    out = torch.zeros(n, n, dtype=torch.bool)
    for qb in range(n):
        for kb in range(n):
            if pattern.kind == "skip":
                keep = False
            elif pattern.kind == "full" or qb in text_blocks or kb in text_blocks:
                keep = True
            else:
                keep = abs(qb - kb) <= pattern.width
                if pattern.kind == "stripe":
                    keep = keep or kb in pattern.columns
            out[qb, kb] = keep
    return out


@pytest.mark.parametrize("layout", LAYOUTS, ids=_ids(LAYOUTS))
def test_position_major_permutation(layout):
    perm = position_major_permutation(layout)
    assert perm.src.tolist() == loop_position_order(layout)
    assert perm.num_slots == layout.num_tokens
    assert position_major_permutation(layout) is perm
    x = torch.randn(2, layout.num_tokens, 3, 4)
    y = perm.apply(x, dim=1)
    assert torch.equal(perm.invert(y, dim=1), x)
    if layout.text_len:
        assert torch.equal(y[:, layout.text_slice], x[:, layout.text_slice])
    # slot video_start + p * frames + t holds the token at (t, p)
    start, s, f = layout.video_start, layout.tokens_per_frame, layout.frames
    t, p = f - 1, s - 1
    assert torch.equal(y[:, start + p * f + t], x[:, start + t * s + p])


PATTERNS = [
    HeadPattern("full"),
    HeadPattern("skip"),
    HeadPattern("diagonal", 0),
    HeadPattern("diagonal", 2),
    HeadPattern("multidiagonal", 0),
    HeadPattern("multidiagonal", 1),
    HeadPattern("stripe", 0, (0,)),
    HeadPattern("stripe", 1, (4, 2)),
]


@pytest.mark.parametrize("bs", [16, 32])
@pytest.mark.parametrize("layout", LAYOUTS, ids=_ids(LAYOUTS))
def test_pattern_block_mask_matches_brute_force(layout, bs):
    n = math.ceil(layout.num_tokens / bs)
    for pattern in PATTERNS:
        if pattern.columns and pattern.columns[-1] >= n:
            with pytest.raises(ValueError, match="out of range"):
                pattern_block_mask(pattern, layout, bs)
            continue
        got = pattern_block_mask(pattern, layout, bs)
        want = brute_block_mask(pattern, layout, bs)
        assert got.shape == (n, n) and got.dtype == torch.bool
        assert torch.equal(got, want), (pattern, (got != want).sum())
        assert pattern_density(pattern, layout, bs) == pytest.approx(want.float().mean().item())
        assert pattern_block_mask(pattern, layout, bs) is got


def test_pattern_density_values():
    layout = TokenLayout(8, 16, 16)  # 2048 tokens, 16 blocks of 128, no text
    assert pattern_density(HeadPattern("full"), layout) == 1.0
    assert pattern_density(HeadPattern("skip"), layout) == 0.0
    assert pattern_density(HeadPattern("diagonal", 0), layout) == pytest.approx(16 / 256)
    assert pattern_density(HeadPattern("multidiagonal", 1), layout) == pytest.approx((16 + 2 * 15) / 256)
    # band of width 0 plus two columns: 16 diagonal blocks + 2 * 15 off-diagonal column blocks
    assert pattern_density(HeadPattern("stripe", 0, (3, 9)), layout) == pytest.approx((16 + 30) / 256)


def test_head_pattern_validation_and_json():
    p = HeadPattern("stripe", 2, (5, 1, 5, 3))
    assert p.columns == (1, 3, 5)
    assert HeadPattern.from_json(p.to_json()) == p
    assert HeadPattern.from_json({"kind": "full"}) == HeadPattern("full")
    assert [HeadPattern(k).order() for k in PATTERN_KINDS] == ["natural", "natural", "position", "natural", "natural"]
    assert hash(HeadPattern("stripe", 0, [2, 1])) == hash(HeadPattern("stripe", 0, (1, 2)))
    with pytest.raises(ValueError, match="kind"):
        HeadPattern("band")
    with pytest.raises(ValueError, match="width"):
        HeadPattern("diagonal", -1)
    with pytest.raises(ValueError, match="no width"):
        HeadPattern("full", 1)
    with pytest.raises(ValueError, match="columns"):
        HeadPattern("diagonal", 1, (2,))
    with pytest.raises(ValueError, match=">= 0"):
        HeadPattern("stripe", 1, (-1,))


def test_stripe_columns():
    mass = torch.tensor([0.1, 5.0, 0.3, 5.0, 2.0, 0.0])
    assert stripe_columns(mass, 0) == ()
    assert stripe_columns(mass, 1) == (1,)  # tie between 1 and 3 goes to the lower block
    assert stripe_columns(mass, 3) == (1, 3, 4)
    assert stripe_columns(mass, 10) == (0, 1, 2, 3, 4, 5)
    torch.manual_seed(0)
    m = torch.rand(40)
    want = sorted(sorted(range(40), key=lambda i: -m[i].item())[:7])
    assert stripe_columns(m, 7) == tuple(want)
    with pytest.raises(ValueError):
        stripe_columns(m[None], 2)


def test_head_block_mask_groups():
    layout = TokenLayout(3, 4, 5, 6, "first")
    pats = (
        HeadPattern("multidiagonal", 1),
        HeadPattern("skip"),
        HeadPattern("full"),
        HeadPattern("diagonal", 1),
        HeadPattern("multidiagonal", 0),
    )
    groups = head_block_mask(pats, layout, 16)
    assert set(groups) == {"natural", "position"}
    assert groups["natural"].heads == (2, 3) and groups["position"].heads == (0, 4)
    for g in groups.values():
        assert g.mask.shape[:2] == (1, len(g.heads))
        assert g.head_index.tolist() == list(g.heads)
        dense = g.mask.to_dense()[0]
        for i, h in enumerate(g.heads):
            assert torch.equal(dense[i], pattern_block_mask(pats[h], layout, 16))
    assert head_block_mask(list(pats), layout, 16)["natural"].mask is groups["natural"].mask
    assert head_block_mask([HeadPattern("skip")] * 2, layout, 16) == {}
    assert set(head_block_mask([HeadPattern("full")] * 2, layout, 16)) == {"natural"}


def oracle(q, k, v, layout, patterns, bs, scale=None):
    """fp64 dense masked attention in the original token order, token masks built per head from the rules."""
    B, S, H, D = q.shape
    scale = D**-0.5 if scale is None else scale
    natural_block = torch.arange(S) // bs
    position_slot = torch.empty(S, dtype=torch.long)
    for slot, tok in enumerate(loop_position_order(layout)):
        position_slot[tok] = slot
    position_block = position_slot // bs
    is_text = torch.zeros(S, dtype=torch.bool)
    if layout.text_len:
        is_text[layout.text_slice] = True
    out = torch.zeros(B, S, H, D, dtype=torch.float64)
    for h, p in enumerate(patterns):
        if p.kind == "skip":
            continue
        blk = position_block if p.kind == "multidiagonal" else natural_block
        text_blocks = blk[is_text].unique()
        text_tok = torch.isin(blk, text_blocks)
        if p.kind == "full":
            tok = torch.ones(S, S, dtype=torch.bool)
        else:
            tok = (blk[:, None] - blk[None, :]).abs() <= p.width
            if p.kind == "stripe":
                tok |= torch.isin(blk, torch.tensor(p.columns, dtype=torch.long))[None, :]
            tok |= text_tok[:, None] | text_tok[None, :]
        s = torch.einsum("bqd,bkd->bqk", q[:, :, h].double(), k[:, :, h].double()) * scale
        s = s.masked_fill(~tok, float("-inf"))
        out[:, :, h] = torch.softmax(s, -1) @ v[:, :, h].double()
    return out


MIX = [
    HeadPattern("full"),
    HeadPattern("multidiagonal", 0),
    HeadPattern("diagonal", 1),
    HeadPattern("skip"),
    HeadPattern("stripe", 0, (3,)),
    HeadPattern("multidiagonal", 1),
]


ATTN_CASES = [
    # (layout, heads, backend); compiled flex is slow to build on CPU, so it runs on one layout only
    (TokenLayout(3, 4, 5, 6, "first"), 6, "reference"),
    (TokenLayout(3, 4, 5, 6, "first"), 6, "gather"),
    (TokenLayout(3, 4, 5, 6, "first"), 6, "flex"),
    (TokenLayout(4, 3, 4, 9, "last"), 5, "reference"),
    (TokenLayout(4, 3, 4, 9, "last"), 5, "gather"),
]


@pytest.mark.parametrize(
    "layout,heads,backend", ATTN_CASES, ids=[f"text_{c[0].text_pos}_h{c[1]}_{c[2]}" for c in ATTN_CASES]
)
def test_sparse_vdit_attention_matches_oracle(layout, heads, backend):
    torch.manual_seed(1)
    pats = MIX[:heads]
    B, S, D, bs = 2, layout.num_tokens, 16, 16
    q, k, v = (torch.randn(B, S, heads, D) for _ in range(3))
    out = sparse_vdit_attention(q, k, v, layout, pats, block_size=bs, backend=backend)
    want = oracle(q, k, v, layout, pats, bs)
    assert out.shape == q.shape and out.dtype == q.dtype
    err = (out.double() - want).abs().max().item()
    assert err < 1e-5, err
    assert out[:, :, 3].abs().max().item() == 0.0  # the skip head


def test_sparse_vdit_attention_single_group_and_edge_cases():
    torch.manual_seed(2)
    layout = TokenLayout(4, 3, 3, 4, "last")
    B, S, H, D, bs = 1, layout.num_tokens, 3, 8, 16
    q, k, v = (torch.randn(B, S, H, D) for _ in range(3))
    for pats in (
        [HeadPattern("multidiagonal", 0)] * H,  # one group covering every head
        [HeadPattern("diagonal", 0), HeadPattern("full"), HeadPattern("stripe", 0, (1,))],
        [HeadPattern("full")] * H,
        [HeadPattern("skip"), HeadPattern("full"), HeadPattern("skip")],
    ):
        out = sparse_vdit_attention(q, k, v, layout, pats, block_size=bs, scale=0.3, backend="reference")
        assert (out.double() - oracle(q, k, v, layout, pats, bs, scale=0.3)).abs().max().item() < 1e-5
    out = sparse_vdit_attention(q, k, v, layout, [HeadPattern("skip")] * H, block_size=bs)
    assert out.shape == q.shape and not out.any()
    with pytest.raises(ValueError, match="3 heads"):
        sparse_vdit_attention(q, k, v, layout, [HeadPattern("full")] * 2, block_size=bs)
    with pytest.raises(ValueError, match="layout"):
        sparse_vdit_attention(q[:, 1:], k[:, 1:], v[:, 1:], layout, [HeadPattern("full")] * H, block_size=bs)
