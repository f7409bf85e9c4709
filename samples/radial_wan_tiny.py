"""Dense vs radial attention on a tiny, randomly initialised Wan pipeline (offline, CPU or GPU).

    python samples/radial_wan_tiny.py [--frames 49 --height 240 --width 416 --steps 10]

The model's weights are random, so its video is noise; the sample shows the mechanics and the numbers: the
same prompt and seed rendered dense and with ``accelerate(pipe, "radial")``, wall time of each, and how close
the radial output is to the dense one (PSNR of the latents, relative L2). The first sparse call on CPU includes
torch.compile of the FlexAttention kernel (about 10-20 s); the timing below excludes it with a warm-up run.
"""

from __future__ import annotations

import argparse
import time

import torch
from accel.pipelines.wan import WAN

import accel
from accel.testing import tiny_wan_pipeline
from accel.testing.metrics import psnr, relative_l2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=49, help="video frames (4k+1)")
    p.add_argument("--height", type=int, default=240, help="pixels, multiple of 16")
    p.add_argument("--width", type=int, default=416, help="pixels, multiple of 16")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    pipe = tiny_wan_pipeline(num_layers=args.layers, num_heads=2, head_dim=64).to(args.device)
    call = dict(
        prompt="a red fox running through snow",
        negative_prompt="blurry",
        num_inference_steps=args.steps,
        height=args.height,
        width=args.width,
        num_frames=args.frames,
        max_sequence_length=16,
        output_type="latent",
    )

    def render():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = pipe(generator=torch.Generator(args.device).manual_seed(0), **call).frames
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    tokens = WAN.token_count(args.frames, args.height, args.width)
    print(
        f"tiny Wan ({args.layers} layers, 2x64 heads), {args.frames} frames {args.height}x{args.width}: "
        f"{tokens} tokens per self-attention, {args.steps} steps with CFG, device {args.device}"
    )

    dense, t_dense = render()
    accel.accelerate(pipe, "radial")
    render()  # warm-up: builds the mask and compiles the sparse kernel
    accel.stats(pipe, reset=True)
    radial, t_radial = render()
    s = accel.stats(pipe)
    accel.disable(pipe)

    cfg_line = f"decay {0.2}, dense steps {round(0.24 * args.steps)}/{args.steps}, dense layers 1"
    density = s["mean_sparse_density"]
    print(
        f"radial preset ({cfg_line}); "
        + (f"mean mask density {density:.3f}, " if density is not None else "")
        + f"{s.get('sparse', 0)} sparse / {s.get('dense', 0)} dense attention calls"
    )
    if s.get("dense:not_faster"):
        print(
            f"{s['dense:not_faster']} calls kept dense attention: at this size the mask is too dense for sparsity to "
            "pay on this backend (try more frames, e.g. --frames 81 --height 480)"
        )
    print(f"dense  : {t_dense:7.2f} s")
    print(f"radial : {t_radial:7.2f} s   speed-up x{t_dense / t_radial:.2f}")
    print(f"quality: latent PSNR {psnr(radial, dense):.1f} dB, relative L2 {relative_l2(radial, dense):.4f}")


if __name__ == "__main__":
    main()
