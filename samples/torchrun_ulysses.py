"""Sparse attention on a transformer split over several processes with diffusers' Ulysses context parallelism.

    torchrun --nproc-per-node 2 samples/torchrun_ulysses.py [--preset radial] [--frames 17 --height 64 --width 64]

One process per rank: CUDA GPUs with nccl when there are enough of them, else the CPU with gloo (the tiny model runs
in seconds there). Each rank splits the token sequence; inside attention, diffusers' Ulysses all-to-all gives every
rank the full sequence with ``heads / ranks`` heads, and accel's sparse attention runs there (per-head state on
global head indices, the frame grid from the unsplit input). Rank 0 then renders the same call in one process and
prints how far the split output is from it (it should be float noise) and the attention counters: ``sparse`` calls
and no ``fallback:context_parallel``. Ring attention (``ring_degree``) would keep dense attention, counted as
``fallback:ring``.

The model's weights are random: this shows the mechanics, not a video. With a real checkpoint, load the pipeline
with ``from_pretrained`` on every rank and do the same: ``enable_parallelism`` on ``pipe.transformer`` (and
``pipe.transformer_2``), then ``accel.accelerate``.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from accel.pipelines.wan import WAN

import accel
from accel.hosts.diffusers_internals import enable_context_parallel
from accel.testing import tiny_wan_pipeline


def render(pipe, args):
    call = {**WAN.tiny_call, "height": args.height, "width": args.width, "num_frames": args.frames}
    return pipe(generator=torch.Generator().manual_seed(0), **{**call, "num_inference_steps": args.steps}).frames


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="radial", help="accel preset (radial, draft, rettention, radial+taylorseer)")
    p.add_argument("--frames", type=int, default=17, help="video frames (4k+1)")
    p.add_argument("--height", type=int, default=64, help="pixels, multiple of 16")
    p.add_argument("--width", type=int, default=64, help="pixels, multiple of 16")
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 2:
        raise SystemExit(f"launch with torchrun: torchrun --nproc-per-node 2 {__file__}")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= world
    if cuda:
        torch.cuda.set_device(local_rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = f"cuda:{local_rank}" if cuda else "cpu"
    # One head per rank at least (Ulysses splits heads; the 80 tokens of the default call must divide too).
    heads = max(2, world)
    # Sequences this short never pay (min_speedup would keep them dense): force the sparse path to show it.
    overrides = dict(block_size=16, min_speedup=0)

    try:
        pipe = tiny_wan_pipeline(num_heads=heads).to(device)
        # = pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world)), which on a
        # machine without an accelerator also needs a device count of 1 while it runs (diffusers divides by it).
        enable_context_parallel(pipe.transformer, ulysses_degree=world)
        accel.accelerate(pipe, args.preset, **overrides)
        out = render(pipe, args)
        stats = accel.stats(pipe)
        if rank == 0:
            single = tiny_wan_pipeline(num_heads=heads).to(device)
            accel.accelerate(single, args.preset, **overrides)
            ref = render(single, args)
            err = ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
            print(f"{world} ranks ({'nccl' if cuda else 'gloo'}), preset {args.preset}: max |split - single| / max "
                  f"|single| = {err:.2e}")  # fmt: skip
            print("rank 0 attention:", {k: v for k, v in stats.items() if v})
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
