"""Block-sparse attention from the device's own fused attention over contiguous key runs (``backend="sdpa"``).

Structured masks (radial, Re-ttention bands, Sparse-vDiT patterns, Draft after its permutation) keep, in each
query-block row, a short union of contiguous runs of key blocks, and neighbouring rows share most of them. A plan
(built once per mask on the host, :func:`plan_mask`) tiles the kept blocks of each ``[QB, KB]`` mask slice with
disjoint pieces:

- **tiles**: rectangles (query-block range x key-block range) at least ``min_tile_rows`` blocks tall. Each runs as
  one fused attention call on contiguous views of q and k/v: no copies, and long query runs, which the fused CPU
  kernel tiles best (it takes 256-row query splits from 768 queries on).
- **leftovers**: the kept blocks no tile took, per query-block row (diagonal bands whose position moves from row to
  row). Rows with the same number of leftover blocks run together: their key blocks are gathered (a block copy,
  small next to the attention over it) into one batched call.

Every piece returns its output and natural-log LSE; pieces are merged per row by log-sum-exp into an fp32
accumulator. Keys past ``Sk`` never enter a call (views end at ``Sk``; gathered tails are masked), padding keys
(``BlockMask.key_valid`` False) are masked with a ``-inf`` bias, and a piece whose keys are all padding is dropped
when the plan is built, so a row with no valid key ends as zeros with LSE ``-inf``.

The fused call with LSE: torch's CPU flash kernel on CPU; FlashAttention (fp16/bf16, no bias) or memory-efficient
attention (fp32 or a bias) on CUDA/ROCm; elsewhere (MPS, XPU) the math path in query chunks, since no public fused
kernel there returns the LSE.

Layouts: q ``[B, Sq, H, D]``, k/v ``[B, Sk, H, D]`` (the public API's), views ``[B, H, S, D]`` for the calls.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from .block_mask import BlockMask

_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# A tile must cover at least this many query tokens: below that the fused CPU kernel splits queries in 32-row
# pieces and runs at about 0.7 of its long-sequence speed, no better than a gathered leftover call.
MIN_TILE_TOKENS = 256
# A tile keeps running down the rows while the next row still holds this share of its key range (the rest of the
# range, above the rows already passed, is cut off as a thin tile of its own).
KEEP_WIDTH = 0.6
# Cap on the gathered keys of one leftover call (elements of K), to bound the copy's memory.
GATHER_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class SlicePlan:
    """How one ``[QB, KB]`` mask slice runs: ``tiles`` ``[T, 4]`` int64 rows ``(q0, q1, k0, k1)`` in blocks
    (half-open), and ``leftovers``: ``(rows [G], key_blocks [G, n])`` groups, rows with ``n`` leftover blocks."""

    tiles: np.ndarray
    leftovers: tuple[tuple[np.ndarray, np.ndarray], ...]

    @property
    def tile_list(self) -> list[tuple[int, int, int, int]]:
        return [tuple(t) for t in self.tiles.tolist()]

    @property
    def calls(self) -> int:
        return len(self.tiles) + len(self.leftovers)


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs ``[a, b)`` of True in a bool vector."""
    padded = np.concatenate(([False], row, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def _tile(kept: np.ndarray, min_rows: int) -> SlicePlan:
    """Tile a bool ``[QB, KB]`` slice: sweep the rows keeping open rectangles that run down while they fit."""
    qb, _ = kept.shape
    tiles: list[tuple[int, int, int, int]] = []
    thin: list[tuple[int, int, int, int]] = []
    open_: list[tuple[int, int, int]] = []  # (k0, k1, r0)

    def close(k0, k1, r0, r1):
        if k1 > k0 and r1 > r0:
            (tiles if r1 - r0 >= min_rows else thin).append((r0, r1, k0, k1))

    for r in range(qb + 1):
        row = kept[r] if r < qb else np.zeros(kept.shape[1], dtype=bool)
        free = row.copy()
        still = []
        for k0, k1, r0 in open_:
            seg = row[k0:k1]
            if seg.all():
                still.append((k0, k1, r0))
                continue
            # The widest run of the open range that this row still keeps.
            best = max(_runs(seg), key=lambda ab: ab[1] - ab[0], default=(0, 0))
            a, b = k0 + best[0], k0 + best[1]
            if b - a >= KEEP_WIDTH * (k1 - k0) and b > a:
                close(k0, a, r0, r)  # the parts of the range this row drops, above it
                close(b, k1, r0, r)
                still.append((a, b, r0))
            else:
                close(k0, k1, r0, r)
        for k0, k1, _ in still:
            free[k0:k1] = False
        open_ = still + [(a, b, r) for a, b in _runs(free)]
    # Cells of short rectangles go to their rows' leftovers.
    left = np.zeros_like(kept)
    for r0, r1, k0, k1 in thin:
        left[r0:r1, k0:k1] = True
    by_count: dict[int, list[int]] = {}
    counts = left.sum(1)
    for r in np.flatnonzero(counts).tolist():
        by_count.setdefault(int(counts[r]), []).append(r)
    leftovers = []
    for _, rows in sorted(by_count.items()):
        rows_a = np.asarray(rows, dtype=np.int64)
        cols = np.stack([np.flatnonzero(left[r]) for r in rows]).astype(np.int64)
        leftovers.append((rows_a, cols))
    arr = np.asarray(tiles, dtype=np.int64).reshape(-1, 4)
    return SlicePlan(arr, tuple(leftovers))


def _drop_padding(plan: SlicePlan, block_live: np.ndarray) -> SlicePlan:
    """Drop key blocks holding no valid key: tiles are trimmed (or dropped), leftover blocks removed."""
    if block_live.all():
        return plan
    tiles = []
    for r0, r1, k0, k1 in plan.tiles.tolist():
        for a, b in _runs(block_live[k0:k1]):
            tiles.append((r0, r1, k0 + a, k0 + b))
    by_count: dict[int, list[tuple[int, np.ndarray]]] = {}
    for rows, cols in plan.leftovers:
        for r, c in zip(rows.tolist(), cols, strict=True):
            c = c[block_live[c]]
            if c.size:
                by_count.setdefault(c.size, []).append((r, c))
    leftovers = tuple(
        (np.asarray([r for r, _ in items], dtype=np.int64), np.stack([c for _, c in items]))
        for _, items in sorted(by_count.items())
    )
    return SlicePlan(np.asarray(tiles, dtype=np.int64).reshape(-1, 4), leftovers)


@dataclass(frozen=True)
class MaskPlan:
    """Per distinct mask slice: its plan and the ``(batch, head)`` slices of the mask that share it."""

    groups: tuple[tuple[SlicePlan, tuple[tuple[int, int], ...]], ...]
    block_size: int

    @property
    def calls(self) -> int:
        return sum(p.calls for p, members in self.groups)


def plan_mask(mask: BlockMask, q_len: int, min_tile_tokens: int = MIN_TILE_TOKENS) -> MaskPlan:
    """The run plan of ``mask`` (cached on the mask object; one per query length and tile height)."""
    per_mask = _PLANS.setdefault(mask, {})
    key = (q_len, min_tile_tokens)
    if key in per_mask:
        return per_mask[key]
    bs = mask.block_size
    dense = mask.to_dense().cpu().numpy()  # [Bm, Hm, QB, KB]
    kb = mask.num_k_blocks
    if mask.key_valid is None:
        live = np.ones(kb, dtype=bool)
    else:
        valid = mask.key_valid.cpu().numpy()
        live = np.zeros(kb * bs, dtype=bool)
        live[: valid.size] = valid
        live = live.reshape(kb, bs).any(1)
    min_rows = max(1, -(-min_tile_tokens // bs))
    shared: dict[bytes, tuple[SlicePlan, list]] = {}
    for b in range(dense.shape[0]):
        for h in range(dense.shape[1]):
            s = dense[b, h]
            sig = np.packbits(s).tobytes()
            if sig not in shared:
                shared[sig] = (_drop_padding(_tile(s, min_rows), live), [])
            shared[sig][1].append((b, h))
    plan = MaskPlan(tuple((p, tuple(m)) for p, m in shared.values()), bs)
    per_mask[key] = plan
    return plan


# --------------------------------------------------------------------------------------------------------------
# The fused call with LSE, per device


def attention_with_lse(q, k, v, scale: float, bias: torch.Tensor | None = None):
    """One dense attention call on ``[B, H, L, D]`` views; ``bias`` (additive, broadcast to ``[B, H, Lq, Lk]``)
    masks padding keys. Returns ``(out [B, H, Lq, D], lse [B, H, Lq] fp32)``; every row must have a valid key."""
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=bias, scale=scale
        )[:2]
        return out, lse
    if q.device.type == "cuda":
        if bias is None and q.dtype in (torch.float16, torch.bfloat16):
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]
            return out, lse
        if bias is not None:
            bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, True, 0.0, False, scale=scale)[
            :2
        ]
        return out, lse[..., : q.shape[2]]
    return _math_with_lse(q, k, v, scale, bias)


def _math_with_lse(q, k, v, scale, bias, chunk: int = 1024):
    """Attention with LSE in query chunks of plain matmuls (devices without a fused kernel that returns it)."""
    outs, lses = [], []
    for s in range(0, q.shape[2], chunk):
        scores = torch.matmul(q[:, :, s : s + chunk].float(), k.float().transpose(-1, -2)) * scale
        if bias is not None:
            scores = scores + bias.float()
        lse = torch.logsumexp(scores, dim=-1)
        outs.append(torch.matmul(torch.exp(scores - lse[..., None]), v.float()).to(q.dtype))
        lses.append(lse)
    return torch.cat(outs, 2), torch.cat(lses, 2)


# --------------------------------------------------------------------------------------------------------------
# Execution


class _Pieces:
    """The attention pieces of one grid of slices, merged per query row by log-sum-exp at the end.

    Every piece has a finite LSE on each of its rows (the plan drops key blocks without a valid key), so the merge
    is a handful of vectorised ops over all pieces instead of one small merge per piece."""

    def __init__(self):
        self.rows: list[torch.Tensor] = []
        self.outs: list[torch.Tensor] = []
        self.lses: list[torch.Tensor] = []

    def add(self, rows: torch.Tensor, out: torch.Tensor, lse: torch.Tensor) -> None:
        """``rows [L]`` query token indices, ``out [b, h, L, D]``, ``lse [b, h, L]``."""
        self.rows.append(rows)
        self.outs.append(out)
        self.lses.append(lse)

    def merge(self, shape: tuple[int, int, int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(out fp32 [b, h, Sq, D], lse fp32 [b, h, Sq])``; rows without a piece are zeros with LSE ``-inf``."""
        b, h, sq, d = shape
        if not self.rows:
            return torch.zeros(shape, device=device), torch.full((b, h, sq), float("-inf"), device=device)
        idx = torch.cat(self.rows).to(device)
        lse = torch.cat(self.lses, 2).float()
        top = torch.full((b, h, sq), float("-inf"), device=device)
        top.scatter_reduce_(2, idx.expand(b, h, -1), lse, "amax")
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        w = torch.exp(lse - top[:, :, idx])  # in (0, 1]: nothing overflows
        total = torch.zeros(b, h, sq, device=device).index_add_(2, idx, w)
        out = torch.zeros(shape, device=device)
        for o, piece_rows, piece_w in zip(self.outs, self.rows, torch.split(w, [r.numel() for r in self.rows], 2),
                                          strict=True):  # fmt: skip
            out.index_add_(2, piece_rows.to(device), o.float() * piece_w.unsqueeze(-1))
        out /= torch.where(total > 0, total, torch.ones_like(total)).unsqueeze(-1)
        return out, top + torch.log(total)  # log(0) = -inf on rows without a piece


def _pad_blocks(t: torch.Tensor, blocks: int, bs: int) -> torch.Tensor:
    """``t [B, S, H, D]`` padded with zeros to ``blocks * bs`` tokens, viewed ``[B, blocks, bs, H, D]``."""
    extra = blocks * bs - t.shape[1]
    if extra:
        t = torch.nn.functional.pad(t, (0, 0, 0, 0, 0, extra))
    return t.view(t.shape[0], blocks, bs, *t.shape[2:])


def sdpa_block_sparse(q, k, v, mask: BlockMask, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q ``[B, Sq, H, D]``, k/v ``[B, Sk, H, D]`` -> ``(out [B, Sq, H, D], lse [B, H, Sq] fp32)``."""
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    bs = mask.block_size
    plan = plan_mask(mask, Sq)
    dev = q.device
    out = torch.zeros(B, H, Sq, D, dtype=q.dtype, device=dev)
    out_lse = torch.full((B, H, Sq), float("-inf"), dtype=torch.float32, device=dev)
    # Additive key bias: 0 for valid keys, -inf for padding and for the gathered tail past Sk.
    key_ok = torch.zeros(mask.num_k_blocks * bs, dtype=torch.bool, device=dev)
    key_ok[:Sk] = True if mask.key_valid is None else mask.key_valid.to(dev)
    any_padding = mask.key_valid is not None and not bool(mask.key_valid.all())
    key_bias = torch.zeros(key_ok.shape, dtype=q.dtype, device=dev).masked_fill_(~key_ok, float("-inf"))
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, D] views
    padded = None  # q, k, v block views padded to whole blocks, made once if a leftover needs them

    for slice_plan, members in plan.groups:
        bsel = sorted({b for b, _ in members})
        hsel = sorted({h for _, h in members})
        # Slices sharing a plan run together when they form a full batch x head grid (always for broadcast masks).
        grids = [(bsel, hsel)] if len(members) == len(bsel) * len(hsel) else [([b], [h]) for b, h in members]
        for bl, hl in grids:
            bidx = _index(bl, B, mask.shape[0], dev)
            hidx = _index(hl, H, mask.shape[1], dev)
            q_g, k_g, v_g = (_select(t, bidx, 0, hidx, 1) for t in (qh, kh, vh))
            pieces = _Pieces()
            for r0, r1, k0, k1 in slice_plan.tile_list:
                qs, ks = slice(r0 * bs, min(r1 * bs, Sq)), slice(k0 * bs, min(k1 * bs, Sk))
                bias = key_bias[None, None, None, ks] if any_padding and not bool(key_ok[ks].all()) else None
                o, lse = attention_with_lse(q_g[:, :, qs], k_g[:, :, ks], v_g[:, :, ks], scale, bias)
                pieces.add(torch.arange(qs.start, qs.stop), o, lse)
            if slice_plan.leftovers:
                if padded is None:
                    padded = [_pad_blocks(t, n, bs) for t, n in ((q, mask.num_q_blocks), (k, mask.num_k_blocks),
                                                                 (v, mask.num_k_blocks))]  # fmt: skip
                blocks = [_select(t, bidx, 0, hidx, 3) for t in padded]
                _run_leftovers(slice_plan, blocks, key_bias.view(-1, bs), key_ok.view(-1, bs), scale, pieces, Sq)
            o, lse = pieces.merge((q_g.shape[0], q_g.shape[1], Sq, D), dev)
            _put(out, o.to(q.dtype), bidx, hidx)
            _put(out_lse, lse, bidx, hidx)
    return out.transpose(1, 2), out_lse


def _run_leftovers(plan, blocks, bias_blocks, ok_blocks, scale, pieces: _Pieces, Sq: int) -> None:
    """Each group of rows with ``n`` leftover blocks: gather their key blocks into one batched call.

    ``blocks``: q, k, v as ``[b, NB, bs, h, D]`` block views (padded to whole blocks) of this grid's slices."""
    qp, kp, vp = blocks
    b, _, bs, h, D = kp.shape
    offsets = torch.arange(bs)
    for rows, cols in plan.leftovers:
        n = cols.shape[1]
        per_call = max(1, GATHER_ELEMENTS // (b * n * bs * h * D))
        for s in range(0, len(rows), per_call):
            r = torch.from_numpy(rows[s : s + per_call])
            c = torch.from_numpy(cols[s : s + per_call]).to(kp.device)
            g = r.numel()
            # [b, G, n, bs, h, D] -> [b*G, h, n*bs, D]; queries [b, G, bs, h, D] -> [b*G, h, bs, D]
            kg = kp[:, c].reshape(b * g, n * bs, h, D).transpose(1, 2)
            vg = vp[:, c].reshape(b * g, n * bs, h, D).transpose(1, 2)
            qg = qp[:, r.to(qp.device)].reshape(b * g, bs, h, D).transpose(1, 2)
            bias = None
            if not bool(ok_blocks[c].all()):
                bias = bias_blocks[c].reshape(g, 1, 1, n * bs).repeat(b, 1, 1, 1)
            o, lse = attention_with_lse(qg, kg, vg, scale, bias)
            # Back to one sequence of G*bs query rows; rows past Sq (the last block's padding) are dropped.
            tokens = (r[:, None] * bs + offsets).reshape(-1)
            o = o.reshape(b, g, h, bs, D).transpose(1, 2).reshape(b, h, g * bs, D)
            lse = lse.reshape(b, g, h, bs).transpose(1, 2).reshape(b, h, g * bs)
            real = tokens < Sq
            if not bool(real.all()):
                tokens, o, lse = tokens[real], o[:, :, real], lse[:, :, real]
            pieces.add(tokens, o, lse)


def _index(sel: list[int], full: int, mask_dim: int, device) -> torch.Tensor | None:
    """Index of the batch or head entries a grid covers (None: all of them, a broadcast mask dim)."""
    if mask_dim == 1 or sel == list(range(full)):
        return None
    return torch.tensor(sel, dtype=torch.long, device=device)


def _select(t: torch.Tensor, bidx, bdim: int, hidx, hdim: int) -> torch.Tensor:
    """The batch entries and heads of a grid (``index_select`` on ``bdim`` and ``hdim``; None keeps all)."""
    if bidx is not None:
        t = t.index_select(bdim, bidx)
    if hidx is not None:
        t = t.index_select(hdim, hidx)
    return t


def _put(dst: torch.Tensor, src: torch.Tensor, bidx, hidx) -> None:
    """Write a grid's ``src [b, h, ...]`` into ``dst [B, H, ...]``."""
    if bidx is None and hidx is None:
        dst.copy_(src)
    elif hidx is None:
        dst.index_copy_(0, bidx, src)
    elif bidx is None:
        dst.index_copy_(1, hidx, src)
    else:
        for i, b in enumerate(bidx.tolist()):
            dst[b].index_copy_(0, hidx, src[i])
