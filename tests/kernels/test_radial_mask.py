"""Radial mask against a brute-force token-level construction and the published densities."""

import math

import numpy as np
import pytest
import torch
from accel.attention_kernels import BlockMask, TokenLayout, radial_mask


def brute_force_radial(layout, bs, decay, sink, thin=128, col_ratio=0.6, row_ratio=1 / 3):
    """Token-level masks per frame pair, each turned into blocks column by column, then OR-ed; diagonal kept.

    A block column counts as strong when more than ``row_ratio`` of the block row's real rows are active in it
    (``bs`` rows, fewer in the sequence's partial last block).
    """
    f, s = layout.frames, layout.tokens_per_frame
    n_tok = layout.num_tokens
    nb = math.ceil(n_tok / bs)
    out = np.zeros((nb, nb), dtype=bool)
    start = layout.video_start
    r = np.arange(s)
    for i in range(f):
        for j in range(f):
            d = abs(i - j)
            if sink and j == 0:
                pair = np.ones((s, s), dtype=bool)
            elif d <= 1:
                pair = np.ones((s, s), dtype=bool)
            else:
                span = 2 ** int(s).bit_length() / 2 ** int(d).bit_length()
                if span < thin and d % int(thin / span) != 0:
                    continue
                w = max(span * decay, bs)
                pair = np.abs(r[None, :] - r[:, None]) <= w
            full = np.zeros((nb * bs, nb * bs), dtype=bool)
            r0, c0 = start + i * s, start + j * s
            full[r0 : r0 + s, c0 : c0 + s] = pair
            for R in range(nb):
                rows = min(bs, n_tok - R * bs)  # the sequence's last block may be partial
                for C in range(nb):
                    tile = full[R * bs : (R + 1) * bs, C * bs : (C + 1) * bs]
                    per_col = tile.sum(0)
                    active = (per_col > 0).sum()
                    strong = (per_col > rows * row_ratio).sum()
                    if active > 0 and strong > col_ratio * active:
                        out[R, C] = True
    np.fill_diagonal(out, True)
    if layout.text_len:
        ts = layout.text_slice
        lo, hi = ts.start // bs, (ts.stop - 1) // bs
        out[lo : hi + 1, :] = True
        out[:, lo : hi + 1] = True
    return torch.from_numpy(out)


CASES = [
    # (frames, height, width, block, decay, sink, thin, text_len, text_pos)
    (6, 4, 8, 16, 1.0, True, 128, 0, "none"),  # 32 tokens/frame, aligned blocks
    (7, 5, 8, 16, 0.5, True, 16, 0, "none"),  # 40 tokens/frame: unaligned frames, thinning active
    (9, 3, 7, 16, 2.0, False, 32, 0, "none"),  # 21 tokens/frame, no sink, far-pair thinning
    (5, 6, 6, 32, 0.3, True, 64, 0, "none"),
    (6, 4, 6, 16, 1.0, False, 16, 10, "last"),  # text after video
    (6, 4, 6, 16, 1.0, True, 16, 7, "first"),  # text before video shifts the block alignment
]


@pytest.mark.parametrize(
    "case",
    CASES,
    ids=[f"f{c[0]}_{c[1]}x{c[2]}_bs{c[3]}_decay{c[4]}_sink{c[5]}_thin{c[6]}_{c[8]}" for c in CASES],
)
def test_radial_matches_brute_force(case):
    f, h, w, bs, decay, sink, thin, text_len, text_pos = case
    layout = TokenLayout(f, h, w, text_len, text_pos)
    got = radial_mask(layout, bs, decay, sink=sink, thin_threshold=thin).to_dense()[0, 0]
    want = brute_force_radial(layout, bs, decay, sink, thin)
    assert got.shape == want.shape
    assert torch.equal(got, want), f"{(got != want).sum()} blocks differ"


# Published configurations (reference/sparse-attention-methods.md 1.5): (frames, h, w tokens, decay, sink, density)
PUBLISHED = {
    "wan_768x1280x69_decay0.2": (18, 48, 80, 0.2, True, 0.287),
    "wan_720x1280x81_decay0.2": (21, 45, 80, 0.2, True, 0.262),
    "wan_480x832x81_decay0.2": (21, 30, 52, 0.2, True, 0.339),
    "wan_768x1280x69_decay1.0": (18, 48, 80, 1.0, True, 0.431),
    "hunyuan_768x1280x117_decay0.95": (30, 48, 80, 0.95, False, 0.275),
    "hunyuan_720x1280x129_decay0.95": (33, 45, 80, 0.95, False, 0.270),
    "wan22_768x1280x77_decay0.8": (20, 48, 80, 0.8, True, 0.353),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_radial_published_density(name):
    f, h, w, decay, sink, density = PUBLISHED[name]
    m = radial_mask(TokenLayout(f, h, w), 128, decay, sink=sink)
    assert m.density == pytest.approx(density, abs=0.0015)


def test_radial_mask_is_cached_and_row_never_empty():
    layout = TokenLayout(18, 48, 80)
    a = radial_mask(layout, 128, 0.2)
    assert radial_mask(layout, 128, 0.2) is a
    assert radial_mask(layout, 128, 0.3) is not a
    assert int(a.kv_num_blocks.min()) >= 1
    assert isinstance(a, BlockMask) and a.shape[:2] == (1, 1)


def test_radial_rejects_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        radial_mask(TokenLayout(4, 4, 4), 16, 0.0)
