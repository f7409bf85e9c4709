"""Text in joint attention: dense text blocks inside the one sparse call (what the methods do) against the split
the Radial Attention repo uses for HunyuanVideo (video x video sparse with its LSE, video x text dense with its
LSE, an LSE merge, and text queries dense over every key), side by side on one device, same inputs.

Both compute exactly the same attention (checked here against each other); only the time differs. Layouts: a
HunyuanVideo-like video with text last and a Flux-like image with text first (Draft-style rows keep text whole,
radial's mask stands in for any static video mask).

    python -m benchmarks.bench_text_blocks [--device cuda] [--out benchmarks/results/text_blocks_cpu.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from accel.attention_kernels import TokenLayout, block_sparse_attention, radial_mask, rettention_mask
from accel.attention_kernels.merge import merge_attention

from .common import bench, device_name

LAYOUTS = [
    ("video 12x24x32 + 256 text last (HunyuanVideo-like)", TokenLayout(12, 24, 32, 256, "last"), "radial"),
    ("image 64x64 + 512 text first (Flux 1024-like)", TokenLayout(1, 64, 64, 512, "first"), "rettention"),
]


def _dense_lse(q, k, v):
    """Dense attention ``[B, S, H, D]`` with its natural-log LSE ``[B, H, S]`` (CPU flash kernel / reference)."""
    if q.device.type == "cpu":
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0.0, False
        )
        return o.transpose(1, 2), lse
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * q.shape[-1] ** -0.5
    lse = torch.logsumexp(s, -1)
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), v.float()).to(q.dtype), lse


def split_call(q, k, v, layout: TokenLayout, video_mask, backend: str):
    """The split: sparse video x video, dense video x text, merged by LSE; text queries dense."""
    vs, ts = layout.video_slice, layout.text_slice
    qv, kv, vv = q[:, vs], k[:, vs], v[:, vs]
    o1, lse1 = block_sparse_attention(qv, kv, vv, video_mask, backend=backend, return_lse=True)
    o2, lse2 = _dense_lse(qv, k[:, ts], v[:, ts])
    ov, _ = merge_attention(o1, lse1, o2, lse2)
    ot = F.scaled_dot_product_attention(q[:, ts].transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    out = torch.empty_like(q)
    out[:, vs], out[:, ts] = ov, ot.transpose(1, 2)
    return out


def masks(layout: TokenLayout, method: str, bs: int = 128):
    video = layout.video_only()
    if method == "radial":
        return radial_mask(layout, bs, 0.95, sink=False), radial_mask(video, bs, 0.95, sink=False)
    return rettention_mask(layout, bs, 128, 1), rettention_mask(video, bs, 128, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    dev = args.device
    dtype = torch.float32 if dev == "cpu" else torch.bfloat16
    backends = ["flex", "gather"] if dev == "cpu" else ["triton", "flex"]
    rows = [
        f"Device: {device_name(dev)}; {args.heads} heads x {args.head_dim}, {dtype}, batch 1; median of "
        f"{args.repeats}.\n",
        "| layout | mask density (joint / video only) | backend | text as dense blocks | split + LSE merge | "
        "split / blocks |",
        "|---|---|---|---:|---:|---:|",
    ]
    g = torch.Generator(device="cpu").manual_seed(0)
    for name, layout, method in LAYOUTS:
        q, k, v = (
            torch.randn(1, layout.num_tokens, args.heads, args.head_dim, generator=g).to(dev, dtype) for _ in range(3)
        )
        joint, video = (m.to(dev) for m in masks(layout, method))
        for backend in backends:
            one = block_sparse_attention(q, k, v, joint, backend=backend)
            # The split needs the sparse partial's LSE: on CPU the gather kernel serves it for both backends.
            split_backend = "gather" if dev == "cpu" else backend
            two = split_call(q, k, v, layout, video, split_backend)
            err = ((one.float() - two.float()).norm() / one.float().norm()).item()
            assert err < (1e-4 if dtype == torch.float32 else 2e-2), f"the two disagree: {err}"
            t_one = bench(lambda: block_sparse_attention(q, k, v, joint, backend=backend), dev, 1, args.repeats)  # noqa: B023
            t_two = bench(lambda: split_call(q, k, v, layout, video, split_backend), dev, 1, args.repeats)  # noqa: B023
            rows.append(
                f"| {name} | {joint.density:.1%} / {video.density:.1%} | {backend} | {t_one * 1e3:.1f} ms | "
                f"{t_two * 1e3:.1f} ms | {t_two / t_one:.2f} |"
            )
            print(rows[-1], flush=True)
    if args.out is not None:
        head = "# Text in joint attention: dense blocks vs LSE merge\n\nBy `python -m benchmarks.bench_text_blocks`"
        args.out.write_text(head + ".\n\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
