"""Block-sparse attention on CPU: gather each query block's kept key blocks, run PyTorch's fused CPU flash kernel.

Inductor's CPU FlexAttention kernel cannot return the LSE (torch 2.13); torch's own CPU flash kernel
(``_scaled_dot_product_flash_attention_for_cpu``) can. Query blocks are sorted by how many key blocks they keep and
processed in small groups: each group gathers its key/value blocks into one contiguous sequence and makes one fused
call, so work follows the kept blocks, not Sq x Sk. Measured on 2 cores it runs at about flex's speed (slightly
slower; benchmarks/results/attention_cpu.md): its calls have short query lengths, which the CPU flash kernel tiles
less efficiently than one long sequence.
"""

from __future__ import annotations

import torch

from .block_mask import BlockMask


def _pad_seq(t: torch.Tensor, length: int) -> torch.Tensor:
    if t.shape[1] == length:
        return t
    return torch.nn.functional.pad(t, (0, 0, 0, 0, 0, length - t.shape[1]))


def gather_block_sparse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockMask,
    scale: float,
    rows_per_group: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q ``[B, Sq, H, D]``, k/v ``[B, Sk, H, D]`` -> ``(out [B, Sq, H, D], lse [B, H, Sq] fp32)``.

    Keys past ``Sk`` and padding keys (``mask.key_valid`` False) are masked with a ``-inf`` bias. Rows with no
    valid key in their kept blocks (including rows with no kept block) are skipped: zeros with LSE ``-inf``.
    """
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    bs = mask.block_size
    QB, KB = mask.num_q_blocks, mask.num_k_blocks
    m = mask.to(q.device)
    Bm, Hm = m.kv_num_blocks.shape[:2]

    qp = _pad_seq(q, QB * bs).view(B, QB, bs, H, D)
    kp = _pad_seq(k, KB * bs).view(B, KB, bs, H, D)
    vp = _pad_seq(v, KB * bs).view(B, KB, bs, H, D)
    out = torch.zeros(B, QB, bs, H, D, dtype=q.dtype, device=q.device)
    lse = torch.full((B, H, QB, bs), float("-inf"), dtype=torch.float32, device=q.device)
    # Which keys of each key block exist: inside Sk and not padding.
    key_ok = torch.zeros(KB * bs, dtype=torch.bool, device=q.device)
    if m.key_valid is None:
        key_ok[:Sk] = True
    else:
        key_ok[:Sk] = m.key_valid
    key_ok = key_ok.view(KB, bs)
    block_live = key_ok.any(-1).cpu()  # [KB]: the block has at least one valid key
    kb_range = torch.arange(KB)
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

    counts_all = m.kv_num_blocks.cpu()
    for bm in range(Bm):
        bsl = slice(None) if Bm == 1 else slice(bm, bm + 1)
        for hm in range(Hm):
            hsl = slice(None) if Hm == 1 else slice(hm, hm + 1)
            counts = counts_all[bm, hm]
            idx_all = m.kv_indices[bm, hm]
            # Rows with a valid key among their kept blocks; the rest stay zeros / -inf (the CPU flash kernel
            # would report LSE 0 for a row whose bias is all -inf).
            live = (block_live[idx_all.cpu().long()] & (kb_range < counts[:, None])).any(-1)
            rows_sorted = torch.argsort(counts, stable=True)
            rows_sorted = rows_sorted[live[rows_sorted]]
            qh, kh, vh = qp[bsl, :, :, hsl], kp[bsl, :, :, hsl], vp[bsl, :, :, hsl]
            b, h = qh.shape[0], qh.shape[3]
            for start in range(0, rows_sorted.numel(), rows_per_group):
                rows = rows_sorted[start : start + rows_per_group].to(q.device)
                g = rows.numel()
                row_counts = counts[rows.cpu()]
                n = int(row_counts.max())
                gi = idx_all[rows, :n].long()  # [G, n]
                # [b, G, n, bs, h, D] -> [b*G, h, n*bs, D] as a strided view (no copy beyond the gather)
                kg = kh[:, gi].reshape(b * g, n * bs, h, D).transpose(1, 2)
                vg = vh[:, gi].reshape(b * g, n * bs, h, D).transpose(1, 2)
                qg = qh[:, rows].reshape(b * g, bs, h, D).transpose(1, 2)
                valid = (torch.arange(n, device=q.device) < row_counts.to(q.device)[:, None])[..., None] & key_ok[gi]
                attn_mask = None
                if not bool(valid.all()):
                    bias = torch.zeros(g, n * bs, dtype=q.dtype, device=q.device)
                    bias.masked_fill_(~valid.reshape(g, n * bs), float("-inf"))
                    attn_mask = bias.repeat(b, 1)[:, None, None, :]  # [b*G, 1, 1, n*bs]
                o, row_lse = flash(qg, kg, vg, 0.0, False, attn_mask=attn_mask, scale=scale)
                out[bsl, rows, :, hsl] = o.transpose(1, 2).reshape(b, g, bs, h, D)
                lse[bsl, hsl, rows] = row_lse.reshape(b, g, h, bs).transpose(1, 2)
    out = out.view(B, QB * bs, H, D)[:, :Sq]
    return out, lse.view(B, H, QB * bs)[:, :, :Sq]
