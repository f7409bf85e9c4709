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


def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    x: torch.Tensor,
    ref: torch.Tensor,
    data_range: float | None = None,
    *,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Mean structural similarity (Wang et al. 2004) of ``x`` against ``ref``, gaussian window.

    The last two dimensions are the image plane; every leading index (batch, frame, channel) is one image, and the
    result is the mean SSIM map over all of them. Statistics use an ``window_size`` gaussian window of standard
    deviation ``sigma`` (11 and 1.5, the paper's choice) at every position where the window fits inside the image
    (no padding), in float64. A window larger than the image shrinks to the image's smaller side (kept odd).
    ``data_range``: the span of valid values (1.0 for frames in [0, 1]); the reference's span if None.
    """
    if x.shape != ref.shape:
        raise ValueError(f"ssim needs equal shapes, got {tuple(x.shape)} and {tuple(ref.shape)}")
    if x.dim() < 2:
        raise ValueError("ssim needs at least two dimensions (height, width)")
    x, ref = x.detach().to(torch.float64), ref.detach().to(torch.float64)
    if data_range is None:
        data_range = float(ref.max() - ref.min()) or 1.0
    h, w = x.shape[-2:]
    win = min(window_size, h, w)
    win -= 1 - win % 2  # odd, so the window has a centre
    g = _gaussian_1d(win, sigma).to(x.device)
    kh, kw = g.view(1, 1, win, 1), g.view(1, 1, 1, win)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(torch.nn.functional.conv2d(t, kh), kw)

    a, b = x.reshape(-1, 1, h, w), ref.reshape(-1, 1, h, w)
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(smap.mean())
