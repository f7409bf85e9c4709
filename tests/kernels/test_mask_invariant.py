"""No mask builder may leave a real query without keys: property tests on the real layouts of every model.

The invariant (every query block holding a real token keeps at least one key block with a real key) is enforced at
the kernel entry point (``block_sparse_attention(..., require_keys=True)``, which every attention method uses);
these tests check that the builders never need that guard, on every resolution and frame count in
``tests/real_layouts.py`` and the block sizes in use. On small ragged layouts (a partial last block) the tail
tokens' outputs are compared with a token-by-token oracle that never looks at ``BlockMask``'s own expansion.
"""

import math

import pytest
import torch
from accel.attention_kernels import (
    BlockMask,
    EmptyQueryBlockError,
    HeadPattern,
    TokenLayout,
    block_sparse_attention,
    draft_attention,
    draft_block_mask,
    draft_permutation,
    radial_mask,
    rettention_mask,
    sparse_vdit_attention,
)
from accel.attention_kernels.sparse_vdit import head_block_mask

from tests.real_layouts import MODELS, WAN22_SIZES, real_layouts

# (block, decay, sink) per model as the presets use them, plus a wide decay.
RADIAL = {
    "wan": [(128, 0.2, True), (128, 1.0, True)],
    "hunyuan": [(128, 0.95, False)],
    "cogvideox": [(128, 0.2, False)],
    "flux": [(128, 0.2, False)],
    "mochi": [(128, 1.0, False)],  # generic defaults: nothing published
    "ltx": [(128, 1.0, False)],
    "hunyuan15": [(128, 0.95, False)],
    "pixart": [],  # images: radial is refused at accelerate time
    "qwen": [],
}
PATTERNS = (
    HeadPattern("diagonal", 0),
    HeadPattern("diagonal", 2),
    HeadPattern("multidiagonal", 1),
    HeadPattern("stripe", 0, (0,)),
    HeadPattern("full"),
    HeadPattern("skip"),
)


def _assert_covered(masks, what):
    bad = [(name, m.empty_query_blocks) for name, m in masks if m.empty_query_blocks]
    assert not bad, f"{what}: {len(bad)} layouts leave query blocks without keys, e.g. {bad[:5]}"


@pytest.mark.parametrize("model", MODELS)
def test_radial_covers_every_query_block(model):
    for bs, decay, sink in RADIAL[model]:
        masks = [(name, radial_mask(lay, bs, decay, sink=sink)) for name, lay in real_layouts(model)]
        _assert_covered(masks, f"radial bs={bs} decay={decay}")


def test_radial_wan22_64_token_blocks_cover_every_query_block():
    sizes = {f"{h}x{w}x" for h, w in WAN22_SIZES}
    layouts = [(n, lay) for n, lay in real_layouts("wan") if any(s in n for s in sizes)]
    _assert_covered([(n, radial_mask(lay, 64, 0.8)) for n, lay in layouts], "radial bs=64 decay=0.8 (Wan 2.2)")


@pytest.mark.parametrize("model", MODELS)
def test_rettention_covers_every_query_block(model):
    for frames in (1, None):
        masks = [(name, rettention_mask(lay, 128, 128, frames)) for name, lay in real_layouts(model)]
        _assert_covered(masks, f"rettention window_frames={frames}")


@pytest.mark.parametrize(
    "model,window,frames,bs",
    [("cogvideox", 21, None, 128), ("cogvideox", 21, None, 64), ("pixart", 64, None, 64), ("pixart", 64, None, 128)],
)
def test_rettention_published_windows_cover_every_query_block(model, window, frames, bs):
    masks = [(name, rettention_mask(lay, bs, window, frames)) for name, lay in real_layouts(model)]
    _assert_covered(masks, f"rettention published +-{window} tokens at {bs}-token blocks")


@pytest.mark.parametrize("model", MODELS)
def test_sparse_vdit_patterns_cover_every_query_block(model):
    # Pattern masks depend on the block count and the text blocks only: one layout per distinct pair of those.
    distinct = {(math.ceil(lay.num_tokens / 128), lay.text_blocks(128)): (n, lay) for n, lay in real_layouts(model)}
    for name, lay in distinct.values():
        groups = head_block_mask(PATTERNS, lay, 128)
        heads = sorted(h for g in groups.values() for h in g.heads)
        assert heads == [0, 1, 2, 3, 4], f"{name}: the skip head must be left out of every launch, got {heads}"
        _assert_covered([(f"{name}/{g.order}", g.mask) for g in groups.values()], "sparse-vdit")


@pytest.mark.parametrize("model", MODELS)
def test_draft_covers_every_query_block(model):
    gen = torch.Generator().manual_seed(0)
    masks = []
    for name, lay in real_layouts(model):
        slots = draft_permutation(lay, 128, (8, 16)).num_slots
        qk = torch.randn(1, slots, 1, 4, generator=gen)
        masks.append((name, draft_block_mask(qk, qk.flip(1), lay, 0.95, pool_backend="torch")))
    _assert_covered(masks, "draft sparsity=0.95")


# ---------------------------------------------------------------------------------------------------------------
# Tail tokens on small ragged layouts, against a token-by-token oracle.

RAGGED = [
    TokenLayout(2, 4, 52),  # the reported case: 416 tokens, a 32-token last block of 128
    TokenLayout(5, 3, 7),  # 105 tokens: blocks of 16 leave 9 in the last one
    TokenLayout(7, 5, 8),  # 280 tokens, frames straddle blocks
    TokenLayout(6, 3, 5, 11, "last"),  # text after the video
    TokenLayout(6, 3, 5, 9, "first"),  # text before the video
    TokenLayout(1, 9, 13, 5, "first"),  # an image with short text first (Qwen-Image, Flux): 122 tokens
    TokenLayout(1, 11, 13),  # an image without text in self-attention (PixArt): 143 tokens
]


def _oracle_rows(q, k, v, allowed, rows, scale):
    """fp32 attention of query tokens ``rows``, each over exactly the keys ``allowed(row)`` lists (token by token)."""
    out = torch.zeros(q.shape[0], len(rows), q.shape[2], q.shape[3])
    for n, r in enumerate(rows):
        keys = allowed(r)
        assert len(keys), f"query token {r} attends no key"
        s = torch.einsum("bhd,bkhd->bhk", q[:, r].float(), k[:, keys].float()) * scale
        out[:, n] = torch.einsum("bhk,bkhd->bhd", s.softmax(-1), v[:, keys].float())
    return out


def _allowed_from(dense_blocks, bs, key_valid=None):
    """Keys of query token r: every real key of every block the block mask keeps for r's block (one head)."""

    def allowed(r):
        keep = dense_blocks[r // bs].nonzero().flatten().tolist()
        keys = [c for b in keep for c in range(b * bs, (b + 1) * bs)]
        return [c for c in keys if c < n_keys and (key_valid is None or key_valid[c])]

    n_keys = dense_blocks.shape[-1] * bs if key_valid is None else key_valid.numel()
    return allowed


def _qkv(n, heads=1, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, n, heads, d, generator=g) for _ in range(3)]


def _block(lay):
    return 128 if lay.num_tokens > 300 else 16


# The compiled FlexAttention backend and the run backend (device SDPA over contiguous key runs).
TAIL_BACKENDS = ["flex", "sdpa"]


@pytest.mark.parametrize("backend", TAIL_BACKENDS)
@pytest.mark.parametrize("lay", RAGGED, ids=str)
def test_radial_tail_tokens_match_oracle(lay, backend):
    bs = _block(lay)
    n = lay.num_tokens
    q, k, v = _qkv(n)
    mask = radial_mask(lay, bs, 0.2)
    out = block_sparse_attention(q, k, v, mask, backend=backend, require_keys=True)
    allowed = _allowed_from(mask.to_dense()[0, 0], bs)
    allowed_n = lambda r: [c for c in allowed(r) if c < n]  # noqa: E731
    tail = list(range((n - 1) // bs * bs, n))
    want = _oracle_rows(q, k, v, allowed_n, tail, 16**-0.5)
    torch.testing.assert_close(out[:, tail].float(), want, atol=2e-5, rtol=1e-4)
    if lay.frames <= 2:  # every frame pair is at distance <= 1: radial is dense attention there
        dense = _oracle_rows(q, k, v, lambda r: list(range(n)), tail, 16**-0.5)
        torch.testing.assert_close(out[:, tail].float(), dense, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", TAIL_BACKENDS)
@pytest.mark.parametrize("lay", RAGGED, ids=str)
def test_rettention_tail_tokens_match_oracle(lay, backend):
    bs = _block(lay)
    n = lay.num_tokens
    q, k, v = _qkv(n, seed=1)
    mask = rettention_mask(lay, bs, bs, 1)
    out = block_sparse_attention(q, k, v, mask, backend=backend, require_keys=True)
    allowed = _allowed_from(mask.to_dense()[0, 0], bs)
    tail = list(range((n - 1) // bs * bs, n))
    want = _oracle_rows(q, k, v, lambda r: [c for c in allowed(r) if c < n], tail, 16**-0.5)
    torch.testing.assert_close(out[:, tail].float(), want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", TAIL_BACKENDS)
@pytest.mark.parametrize("lay", RAGGED, ids=str)
def test_sparse_vdit_tail_tokens_match_oracle(lay, backend):
    bs = 16
    n = lay.num_tokens
    patterns = (HeadPattern("diagonal", 0), HeadPattern("stripe", 0, (0,)), HeadPattern("skip"))
    q, k, v = _qkv(n, heads=3, seed=2)
    out = sparse_vdit_attention(q, k, v, lay, patterns, block_size=bs, backend=backend, require_keys=True)
    tail = list(range((n - 1) // bs * bs, n))
    for h in range(2):
        allowed = _allowed_from(head_block_mask(patterns, lay, bs)["natural"].mask.to_dense()[0, h], bs)
        want = _oracle_rows(q[:, :, h : h + 1], k[:, :, h : h + 1], v[:, :, h : h + 1],
                            lambda r, a=allowed: [c for c in a(r) if c < n], tail, 16**-0.5)  # fmt: skip
        torch.testing.assert_close(out[:, tail, h : h + 1].float(), want, atol=2e-5, rtol=1e-4)
    assert torch.equal(out[:, :, 2], torch.zeros_like(out[:, :, 2]))  # the skip head, by design


@pytest.mark.parametrize("backend", TAIL_BACKENDS)
@pytest.mark.parametrize("lay", RAGGED, ids=str)
def test_draft_tail_tokens_match_oracle(lay, backend):
    bs, patch = 16, (4, 4)
    n = lay.num_tokens
    q, k, v = _qkv(n, seed=3)
    out, mask = draft_attention(q, k, v, lay, 0.8, block_size=bs, patch=patch, backend=backend, return_mask=True,
                                require_keys=True)  # fmt: skip
    perm = draft_permutation(lay, bs, patch)
    allowed_slots = _allowed_from(mask.to_dense()[0, 0], bs, mask.key_valid)
    src = perm.src.tolist()
    slot_of = perm.slots.tolist()
    # The oracle works on original tokens: token r attends the tokens sitting in the slots its slot's block keeps.
    allowed = lambda r: [src[c] for c in allowed_slots(slot_of[r])]  # noqa: E731
    tail = list(range((n - 1) // bs * bs, n))
    want = _oracle_rows(q, k, v, allowed, tail, 16**-0.5)
    torch.testing.assert_close(out[:, tail].float(), want, atol=2e-5, rtol=1e-4)


def test_kernel_entry_refuses_a_mask_with_an_empty_query_block():
    q, k, v = _qkv(40)
    blocks = torch.ones(3, 3, dtype=torch.bool)
    blocks[2] = False  # the 8-token tail block keeps nothing
    mask = BlockMask.from_dense(blocks, 16)
    assert mask.empty_query_blocks == 1
    with pytest.raises(EmptyQueryBlockError, match="1 query block"):
        block_sparse_attention(q, k, v, mask, backend="flex", require_keys=True)
    # Without the flag the kernel contract stands: such rows give zeros (LSE merges rely on it).
    out = block_sparse_attention(q, k, v, mask, backend="flex")
    assert torch.equal(out[:, 32:], torch.zeros_like(out[:, 32:]))


def test_padding_only_blocks_need_no_keys():
    # Square mask over a permuted sequence whose last block is padding alone: nothing there needs attention.
    blocks = torch.eye(2, dtype=torch.bool)
    blocks[1, 1] = False
    valid = torch.arange(32) < 16
    assert BlockMask.from_dense(blocks, 16, key_valid=valid).empty_query_blocks == 0
    blocks = torch.tensor([[False, True], [True, True]])  # block 0 keeps only padding keys
    assert BlockMask.from_dense(blocks, 16, key_valid=valid).empty_query_blocks == 1
    assert math.isclose(BlockMask.from_dense(blocks, 16, key_valid=valid).density, 0.75)
