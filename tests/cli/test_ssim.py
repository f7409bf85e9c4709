"""SSIM: a gaussian-window SSIM against a brute-force per-window computation and closed-form cases."""

from __future__ import annotations

import math

import pytest
import torch

from accel.testing.metrics import psnr, ssim


def _brute_force_ssim(x, y, data_range, size=11, sigma=1.5, k1=0.01, k2=0.03) -> float:
    """Wang et al.'s SSIM written out window by window: weighted means, variances and covariance per position."""
    x, y = x.double(), y.double()
    h, w = x.shape
    size = min(size, h, w)
    size -= 1 - size % 2
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    wgt = torch.outer(g, g)
    wgt = wgt / wgt.sum()
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    values = []
    for i in range(h - size + 1):
        for j in range(w - size + 1):
            a, b = x[i : i + size, j : j + size], y[i : i + size, j : j + size]
            ma, mb = (wgt * a).sum(), (wgt * b).sum()
            va, vb = (wgt * (a - ma) ** 2).sum(), (wgt * (b - mb) ** 2).sum()
            cov = (wgt * (a - ma) * (b - mb)).sum()
            values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(torch.stack(values).mean())


def test_identical_images_give_one():
    x = torch.rand(3, 2, 32, 40, generator=torch.Generator().manual_seed(0))
    assert ssim(x, x.clone(), data_range=1.0) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("shape,window", [((17, 23), 11), ((16, 16), 7), ((9, 12), 11)])
def test_matches_brute_force_per_window(shape, window):
    gen = torch.Generator().manual_seed(1)
    ref = torch.rand(shape, generator=gen)
    x = (ref + 0.2 * torch.randn(shape, generator=gen)).clamp(0, 1)
    expected = _brute_force_ssim(x, ref, 1.0, size=window)
    assert ssim(x, ref, data_range=1.0, window_size=window) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert expected < 0.9  # a real degradation, not a trivial case


def test_leading_dimensions_are_separate_images():
    gen = torch.Generator().manual_seed(2)
    ref = torch.rand(2, 3, 20, 20, generator=gen)
    x = (ref + 0.1 * torch.randn(2, 3, 20, 20, generator=gen)).clamp(0, 1)
    per_image = [_brute_force_ssim(x[f, c], ref[f, c], 1.0) for f in range(2) for c in range(3)]
    assert ssim(x, ref, data_range=1.0) == pytest.approx(sum(per_image) / len(per_image), rel=1e-10)


@pytest.mark.parametrize("a,b", [(0.2, 0.3), (0.5, 0.9), (0.0, 1.0)])
def test_constant_images_have_the_closed_form(a, b):
    # Zero variance everywhere: only the luminance term remains, SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    c1 = (0.01 * 1.0) ** 2
    x, ref = torch.full((24, 24), a), torch.full((24, 24), b)
    a, b = float(x[0, 0]), float(ref[0, 0])  # the float32 values the images hold
    assert ssim(x, ref, data_range=1.0) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)


def test_contrast_change_has_the_closed_form():
    # A +-d checkerboard around m, and x = m + s (ref - m): in every window the means are ~m (luminance term ~1),
    # sigma_x = s sigma and cov = s sigma^2, so SSIM ~ (2 s sigma^2 + C2) / ((1 + s^2) sigma^2 + C2) ~ 2s / (1 + s^2)
    # (C2 = 9e-4 against sigma^2 ~ d^2 = 0.0625, and the window means' tiny offset from m, move it by < 0.5%).
    d, m, s = 0.25, 0.5, 0.5
    i = torch.arange(64)
    ref = m + d * ((-1.0) ** (i[:, None] + i[None, :]))
    x = m + s * (ref - m)
    assert ssim(x, ref, data_range=1.0) == pytest.approx(2 * s / (1 + s * s), rel=5e-3)  # 0.8


def test_more_noise_lower_ssim_and_symmetric():
    gen = torch.Generator().manual_seed(3)
    ref = torch.rand(3, 32, 32, generator=gen)
    noise = torch.randn(3, 32, 32, generator=gen)
    values = [ssim((ref + s * noise).clamp(0, 1), ref, data_range=1.0) for s in (0.01, 0.05, 0.2, 0.5)]
    assert values == sorted(values, reverse=True) and values[0] > 0.99 and values[-1] < 0.6
    x = (ref + 0.1 * noise).clamp(0, 1)
    assert ssim(x, ref, data_range=1.0) == pytest.approx(ssim(ref, x, data_range=1.0), rel=1e-12)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="equal shapes"):
        ssim(torch.zeros(8, 8), torch.zeros(8, 9))


def test_psnr_still_reports_identity_as_inf():
    x = torch.rand(4, 4)
    assert math.isinf(psnr(x, x, data_range=1.0))
