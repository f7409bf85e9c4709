"""The embedded model's "VAE": pixel packing plus a fitted linear projection (PCA), shaped like diffusers'
``AutoencoderKLWan`` so that a stock ``WanPipeline`` drives it.

Packing, as Wan's causal VAE groups frames: the first frame stands alone (it is packed twice), every later pair of
frames becomes one latent frame; each ``s x s`` pixel square (``s = scale_factor_spatial``: 8, one token's cell)
becomes a vector of ``3 * 2 * s^2`` values, channel order ``(frame-in-pair, rgb, dy, dx)``.

With ``components = K`` (shapes-wan: 24) that vector is projected on the top K principal directions of the
training clips' cells (``basis`` ``[K, 3 * 2 * s^2]``, ``mean``, fitted by :func:`fit`), each scaled to unit
variance: video ``[B, 3, 1 + 2k, H, W]`` in ``[-1, 1]`` <-> latents ``[B, K, 1 + k, H / s, W / s]``. The clips' cells
lie in a space of far fewer than K dimensions (a background colour, an object colour times one of three masks), so
``decode(encode(x)) == x`` for them up to float rounding, and the denoiser predicts K values per token instead of
384 pixels. Without ``components`` the latents are the packed pixels themselves (an exact round trip for any video).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


@dataclass
class _Latents:
    latent_dist: object


class _Exact:
    """A point "distribution" (diffusers pipelines call ``.sample()`` / ``.mode()`` on the encoder output)."""

    def __init__(self, z):
        self.z = z

    def sample(self, generator=None):
        return self.z

    def mode(self):
        return self.z


class PixelPackVAE(ModelMixin, ConfigMixin):
    """Space-to-depth packing with Wan's frame grouping, then an optional fitted linear projection."""

    @register_to_config
    def __init__(
        self,
        scale_factor_spatial: int = 8,
        scale_factor_temporal: int = 2,
        components: int | None = None,
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
        z_dim: int | None = None,
    ):
        super().__init__()
        s, t = scale_factor_spatial, scale_factor_temporal
        packed = 3 * t * s * s
        dim = components or packed
        if z_dim not in (None, dim):
            raise ValueError(f"PixelPackVAE: z_dim is {dim} for this packing, got {z_dim}")
        # Wan's pipeline reads z_dim and the latent normalisation (identity: the projection is already unit-scaled).
        self.register_to_config(
            z_dim=dim, latents_mean=list(latents_mean or (0.0,) * dim), latents_std=list(latents_std or (1.0,) * dim)
        )
        self.temperal_downsample = [t > 1]  # (sic) read by some diffusers versions
        if components:
            self.register_buffer("basis", torch.eye(components, packed))  # [K, packed], rows orthonormal
            self.register_buffer("mean", torch.zeros(packed))
            self.register_buffer("scale", torch.ones(components))  # per-component standard deviation
        else:
            self.register_buffer("_anchor", torch.zeros(1))  # a weight file, so the folder round-trips

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    def pack(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 1 + t k, H, W]`` -> ``[B, 3 t s^2, 1 + k, H / s, W / s]`` (no projection)."""
        s, t = self.config.scale_factor_spatial, self.config.scale_factor_temporal
        b, c, f, h, w = video.shape
        if (f - 1) % t or h % s or w % s:
            raise ValueError(f"PixelPackVAE: need 1 + {t}k frames and sides divisible by {s}, got {tuple(video.shape)}")
        video = torch.cat([video[:, :, :1].expand(b, c, t, h, w), video[:, :, 1:]], dim=2)  # first frame t times
        lf = (f - 1) // t + 1
        x = video.reshape(b, c, lf, t, h // s, s, w // s, s)
        x = x.permute(0, 3, 1, 5, 7, 2, 4, 6)  # b, t, c, dy, dx, latent frame, h, w
        return x.reshape(b, t * c * s * s, lf, h // s, w // s)

    def unpack(self, z: torch.Tensor) -> torch.Tensor:
        s, t = self.config.scale_factor_spatial, self.config.scale_factor_temporal
        b, _, lf, hh, ww = z.shape
        x = z.reshape(b, t, 3, s, s, lf, hh, ww).permute(0, 2, 5, 1, 6, 3, 7, 4)  # b, c, lf, t, h, dy, w, dx
        x = x.reshape(b, 3, lf * t, hh * s, ww * s)
        return torch.cat([x[:, :, t - 1 : t], x[:, :, t:]], dim=2)  # the first frame: the last of its copies

    def project(self, packed: torch.Tensor) -> torch.Tensor:
        if not self.config.components:
            return packed
        x = packed.movedim(1, -1) - self.mean
        return ((x @ self.basis.T) / self.scale).movedim(-1, 1)

    def unproject(self, z: torch.Tensor) -> torch.Tensor:
        if not self.config.components:
            return z
        return ((z.movedim(1, -1) * self.scale) @ self.basis + self.mean).movedim(-1, 1)

    @torch.no_grad()
    def fit(self, videos: torch.Tensor) -> float:
        """Fit ``mean``, ``basis`` and ``scale`` to ``videos`` ``[N, 3, F, H, W]`` (PCA of their packed cells);
        returns the share of the cells' variance the components keep."""
        k = self.config.components
        cells = self.pack(videos).movedim(1, -1).reshape(-1, self.basis.shape[1]).double()
        mean = cells.mean(0)
        _, sv, vh = torch.linalg.svd(cells - mean, full_matrices=False)
        var = sv**2 / (len(cells) - 1)
        self.mean.copy_(mean.float())
        self.basis.copy_(vh[:k].float())
        self.scale.copy_(var[:k].sqrt().clamp_min(1e-4).float())
        return float(var[:k].sum() / var.sum())

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        z = self.project(self.pack(x))
        return _Latents(_Exact(z)) if return_dict else (_Exact(z),)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        video = self.unpack(self.unproject(z)).clamp(-1, 1)
        if return_dict:
            from diffusers.models.autoencoders.vae import DecoderOutput

            return DecoderOutput(sample=video)
        return (video,)
