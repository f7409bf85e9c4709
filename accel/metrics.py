"""Quality metrics for comparing an accelerated output with the dense one."""

from __future__ import annotations

import math

import torch


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB of ``x`` against ``ref`` (``data_range``: the reference's span if None)."""
    x, ref = x.float(), ref.float()
    if data_range is None:
        data_range = float(ref.max() - ref.min()) or 1.0
    mse = float(torch.mean((x - ref) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def relative_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))
