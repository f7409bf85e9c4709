"""Re-ttention's window mask against a token-level brute force, and the rho reshaping against dense fp64 math."""

import math
import time

import pytest
import torch
from accel.attention_kernels import BlockMask, TokenLayout, block_sparse_attention
from accel.attention_kernels.rettention import mass_ratio, reshape_sparse, rettention_mask, rettention_position_mask
from accel.attention_kernels.sparse_vdit import position_major_permutation


def token_rule(layout, window_tokens, window_frames):
    """bool [L, L]: the token rule by broadcasting (text rows and columns dense)."""
    L, s = layout.num_tokens, layout.tokens_per_frame
    idx = torch.arange(L) - layout.video_start
    is_text = torch.zeros(L, dtype=torch.bool)
    if layout.text_len:
        is_text[layout.text_slice] = True
    frame, r = idx.div(s, rounding_mode="floor"), idx.remainder(s)
    near = (r[:, None] - r[None, :]).abs() <= window_tokens
    if window_frames is not None:
        near &= (frame[:, None] - frame[None, :]).abs() <= window_frames
    return near | is_text[:, None] | is_text[None, :]


def brute_force_blocks(layout, bs, window_tokens, window_frames):
    """A block pair is kept iff any token pair inside it is kept."""
    tok = token_rule(layout, window_tokens, window_frames)
    n = math.ceil(layout.num_tokens / bs)
    pad = n * bs - layout.num_tokens
    tok = torch.nn.functional.pad(tok, (0, pad, 0, pad))
    return tok.view(n, bs, n, bs).any(3).any(1)


CASES = [
    # (frames, height, width, text_len, text_pos, block, window_tokens)
    (5, 4, 8, 0, "none", 16, 5),  # 32 tokens/frame: frames aligned to blocks
    (6, 3, 7, 0, "none", 16, 3),  # 21 tokens/frame: unaligned
    (7, 5, 5, 0, "none", 16, 0),  # window 0: the same raster index only
    (4, 6, 9, 11, "first", 32, 12),  # text first shifts the block alignment
    (5, 3, 5, 9, "last", 16, 7),
    (3, 4, 4, 3, "first", 16, 100),  # window wider than a frame
    (1, 6, 7, 5, "last", 16, 4),  # an image
]


@pytest.mark.parametrize("window_frames", [0, 1, None])
@pytest.mark.parametrize("case", CASES, ids=[f"f{c[0]}_{c[1]}x{c[2]}_text{c[3]}{c[4]}_bs{c[5]}_w{c[6]}" for c in CASES])
def test_rettention_mask_matches_brute_force(case, window_frames):
    f, h, w, text_len, text_pos, bs, wt = case
    layout = TokenLayout(f, h, w, text_len, text_pos)
    m = rettention_mask(layout, bs, wt, window_frames)
    assert isinstance(m, BlockMask) and m.shape[:2] == (1, 1)
    got = m.to_dense()[0, 0]
    want = brute_force_blocks(layout, bs, wt, window_frames)
    assert torch.equal(got, want), f"{(got != want).sum()} blocks differ"
    # the block mask contains the token rule
    tok = m.token_mask(layout.num_tokens, layout.num_tokens)[0, 0]
    assert not (token_rule(layout, wt, window_frames) & ~tok).any()
    assert rettention_mask(layout, bs, wt, window_frames) is m


@pytest.mark.parametrize("case", CASES, ids=[f"f{c[0]}_{c[1]}x{c[2]}_text{c[3]}{c[4]}_bs{c[5]}_w{c[6]}" for c in CASES])
def test_position_order_mask_matches_brute_force(case):
    """The every-frame window in position-major order: the token rule moved to permuted slots, then the minimal
    block cover, exactly."""
    f, h, w, text_len, text_pos, bs, wt = case
    layout = TokenLayout(f, h, w, text_len, text_pos)
    src = position_major_permutation(layout).src  # slot -> original token
    tok = token_rule(layout, wt, None)[src][:, src]
    n = math.ceil(layout.num_tokens / bs)
    pad = n * bs - layout.num_tokens
    want = torch.nn.functional.pad(tok, (0, pad, 0, pad)).view(n, bs, n, bs).any(3).any(1)
    got = rettention_position_mask(layout, bs, wt).to_dense()[0, 0]
    assert torch.equal(got, want), f"{(got != want).sum()} blocks differ"


def test_rettention_density_wan_480p():
    layout = TokenLayout(21, 30, 52)  # Wan 2.1 480x832, 81 frames: 32760 tokens, 256 blocks of 128
    t0 = time.perf_counter()
    one = rettention_mask(layout, 128, 128, 1)
    elapsed = time.perf_counter() - t0
    zero = rettention_mask(layout, 128, 128, 0)
    every = rettention_mask(layout, 128, 128, None)
    assert elapsed < 1.0, elapsed
    assert one.density == pytest.approx(0.040680, abs=1e-5)
    assert zero.density == pytest.approx(0.011658, abs=1e-5)
    assert every.density == pytest.approx(0.314819, abs=1e-5)
    assert int(zero.kv_num_blocks.min()) >= 1
    # text first: its blocks are dense on top of the window
    text = rettention_mask(TokenLayout(21, 30, 52, 512, "first"), 128, 128, 1)
    assert text.density > one.density


def test_rettention_mask_validation():
    with pytest.raises(ValueError, match="window_tokens"):
        rettention_mask(TokenLayout(2, 2, 2), 16, -1)
    with pytest.raises(ValueError, match="window_frames"):
        rettention_mask(TokenLayout(2, 2, 2), 16, 4, -1)


@pytest.mark.parametrize("backend", ["reference", "gather"])
@pytest.mark.parametrize(
    "layout,bs,wt,wf",
    [(TokenLayout(4, 3, 7, 0, "none"), 16, 4, 1), (TokenLayout(3, 4, 5, 6, "first"), 16, 3, 0)],
    ids=["video_only", "text_first"],
)
def test_mass_ratio_and_reshape_match_dense_formula(layout, bs, wt, wf, backend):
    torch.manual_seed(0)
    B, S, H, D = 2, layout.num_tokens, 3, 16
    scale = D**-0.5
    q, k, v = (torch.randn(B, S, H, D) for _ in range(3))
    mask = rettention_mask(layout, bs, wt, wf)
    n = math.ceil(S / bs)
    out_s, lse_s = block_sparse_attention(q, k, v, mask, backend=backend, return_lse=True)
    _, lse_full = block_sparse_attention(q, k, v, BlockMask.full(n, n, bs), backend=backend, return_lse=True)
    rho = mass_ratio(lse_s, lse_full)
    got = reshape_sparse(out_s, rho)
    assert rho.dtype == torch.float32 and rho.shape == (B, H, S)
    assert got.dtype == q.dtype and got.shape == q.shape

    # by hand, fp64: s = q.k * scale, Z over all keys and over the mask S
    keep = mask.token_mask(S, S)[0, 0]
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
    s = qd @ kd.transpose(-1, -2) * scale
    m = s.amax(-1, keepdim=True)
    e = torch.exp(s - m)
    z_full = e.sum(-1)
    e_s = e * keep
    z_s = e_s.sum(-1)
    want_rho = z_s / z_full
    want = (want_rho[..., None] * (e_s / z_s[..., None]) @ vd).transpose(1, 2)
    assert (rho.double() - want_rho).abs().max().item() < 1e-5
    assert (got.double() - want).abs().max().item() < 1e-5
    # the same thing as sum_{j in S} exp(s_ij - lse_full_i) v_j
    lse_full_d = torch.logsumexp(s, -1, keepdim=True)
    direct = ((torch.exp(s - lse_full_d) * keep) @ vd).transpose(1, 2)
    assert (got.double() - direct).abs().max().item() < 1e-5
    assert 0 < rho.min().item() < 0.99 and rho.max().item() <= 1  # sparse rows keep part of the mass (text rows: all)


def test_mass_ratio_edge_rows_and_dtypes():
    lse_s = torch.tensor([[[float("-inf"), 0.0, 1.0 + 1e-6, -2.0]]])
    lse_f = torch.tensor([[[0.5, 0.0, 1.0, float("-inf")]]])
    rho = mass_ratio(lse_s, lse_f)
    assert rho.dtype == torch.float32
    assert rho.tolist() == [[[0.0, 1.0, 1.0, 1.0]]]  # empty row -> 0; clamped to [0, 1]
    assert mass_ratio(torch.full((1, 1, 2), float("-inf")), torch.full((1, 1, 2), float("-inf"))).tolist() == [
        [[0.0, 0.0]]
    ]
    out = torch.randn(2, 5, 3, 4).to(torch.bfloat16)
    r = torch.rand(2, 3, 5)
    got = reshape_sparse(out, r)
    assert got.dtype == torch.bfloat16
    want = (out.float() * r.transpose(1, 2)[..., None]).to(torch.bfloat16)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="rho"):
        reshape_sparse(out, r.transpose(1, 2))
    with pytest.raises(ValueError, match="shapes differ"):
        mass_ratio(lse_s, lse_f[..., :2])
