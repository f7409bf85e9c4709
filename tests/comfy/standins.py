"""Stand-ins for the parts of ComfyUI the node touches (ComfyUI is not on the package index).

Own minimal re-implementations of ComfyUI's documented behaviour (0.3.60+), not copies of its code:

- ``comfy.patcher_extension``: ``WrappersMP`` names, a wrapper executor that calls each wrapper with
  ``(executor, *args, **kwargs)`` (``executor.class_obj`` the instance) and finally the original, and
  ``get_all_wrappers`` reading ``transformer_options["wrappers"][type][key]``.
- ``comfy.model_patcher.ModelPatcher``: ``clone()`` shares ``model`` and deep-copies ``model_options``; wrappers
  live on the patcher and are copied per key; ``set_model_patch_replace`` copies the dicts it changes.
- ``comfy.ldm.modules.attention``: ``wrap_attn`` calls ``transformer_options["optimized_attention_override"](func,
  *args, **kwargs)`` with the ``_inside_attn_wrapper`` flag in kwargs; ``optimized_attention`` is PyTorch SDPA over
  ``[B, L, H*D]`` or (``skip_reshape``) ``[B, H, L, D]``, output ``[B, L, H*D]`` unless ``skip_output_reshape``.
- toy diffusion models with ComfyUI's class names, forward signatures, attention calls and block replace points:
  ``WanModel`` (self-attention ``[B, L, H*D]`` with ``heads=`` keyword, separate cross-attention), ``Flux`` (joint
  ``[B, H, L, D]``, text first) and ``HunyuanVideo`` (joint, ``flipped_img_txt``: image first, text last; a text-only
  refiner call with a mask first; optional padded-text key mask). Like ComfyUI's Flux ``DoubleStreamBlock`` and
  ``SingleStreamBlock``, the joint blocks add to their ``txt`` (double) and ``img`` (single) inputs in place.
- ``sample(...)``: the sampling path: OUTER_SAMPLE wrappers around a run, per forward ``transformer_options`` holding
  ``sample_sigmas``, ``sigmas``, ``cond_or_uncond`` and the patcher's wrappers; batched or separate cond/uncond.
"""

from __future__ import annotations

import copy
import math
import sys
import types

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------------------------
# comfy.patcher_extension


class WrappersMP:
    OUTER_SAMPLE = "outer_sample"
    SAMPLER_SAMPLE = "sampler_sample"
    CALC_COND_BATCH = "calc_cond_batch"
    APPLY_MODEL = "apply_model"
    DIFFUSION_MODEL = "diffusion_model"


class WrapperExecutor:
    def __init__(self, original, class_obj, wrappers, idx=0):
        self.original, self.class_obj, self.wrappers, self.idx = original, class_obj, list(wrappers), idx

    def __call__(self, *args, **kwargs):
        return WrapperExecutor(self.original, self.class_obj, self.wrappers, self.idx + 1).execute(*args, **kwargs)

    def execute(self, *args, **kwargs):
        if self.idx == len(self.wrappers):
            return self.original(*args, **kwargs)
        return self.wrappers[self.idx](self, *args, **kwargs)


def get_all_wrappers(wrapper_type, transformer_options, is_model_options=False):
    if is_model_options:
        transformer_options = transformer_options.get("transformer_options", {})
    return [w for ws in transformer_options.get("wrappers", {}).get(wrapper_type, {}).values() for w in ws]


# ---------------------------------------------------------------------------------------------------------------
# comfy.model_patcher


class ModelPatcher:
    def __init__(self, model):
        self.model = model
        self.model_options = {"transformer_options": {}}
        self.wrappers: dict = {}
        self.parent = None

    def clone(self):
        n = ModelPatcher(self.model)
        n.model_options = copy.deepcopy(self.model_options)
        n.wrappers = {t: {k: list(ws) for k, ws in d.items()} for t, d in self.wrappers.items()}
        n.parent = self
        return n

    def add_wrapper_with_key(self, wrapper_type, key, wrapper):
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        to = dict(self.model_options["transformer_options"])
        to["patches_replace"] = dict(to.get("patches_replace", {}))
        to["patches_replace"][name] = dict(to["patches_replace"].get(name, {}))
        key = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
        to["patches_replace"][name][key] = patch
        self.model_options["transformer_options"] = to

    def get_model_object(self, name):
        obj = self.model
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj


# ---------------------------------------------------------------------------------------------------------------
# comfy.ldm.modules.attention


def wrap_attn(func):
    def wrapper(*args, **kwargs):
        if "_inside_attn_wrapper" in kwargs:
            return func(*args, **kwargs)
        kwargs["_inside_attn_wrapper"] = True
        try:
            to = kwargs.get("transformer_options")
            if to is not None and "optimized_attention_override" in to:
                return to["optimized_attention_override"](func, *args, **kwargs)
            return func(*args, **kwargs)
        finally:
            del kwargs["_inside_attn_wrapper"]

    return wrapper


CALLS: list[dict] = []  # what each attention call looked like (tests read it)


def attention_pytorch(
    q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False, **kwargs
):
    if not skip_reshape:
        b, _, hd = q.shape
        q, k, v = (t.view(b, -1, heads, hd // heads).transpose(1, 2) for t in (q, k, v))
    if mask is not None:
        while mask.dim() < 4:
            mask = mask.unsqueeze(0 if mask.dim() == 2 else 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out if skip_output_reshape else out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


optimized_attention = wrap_attn(attention_pytorch)


def install() -> None:
    """Put the stand-in modules into ``sys.modules`` (idempotent)."""
    if "comfy.patcher_extension" in sys.modules and getattr(sys.modules["comfy"], "_accel_standin", False):
        return
    comfy = types.ModuleType("comfy")
    comfy._accel_standin = True
    pe = types.ModuleType("comfy.patcher_extension")
    pe.WrappersMP, pe.WrapperExecutor, pe.get_all_wrappers = WrappersMP, WrapperExecutor, get_all_wrappers
    mp = types.ModuleType("comfy.model_patcher")
    mp.ModelPatcher = ModelPatcher
    attn = types.ModuleType("comfy.ldm.modules.attention")
    attn.wrap_attn, attn.optimized_attention, attn.attention_pytorch = wrap_attn, optimized_attention, attention_pytorch
    comfy.patcher_extension, comfy.model_patcher = pe, mp
    sys.modules.update(
        {
            "comfy": comfy,
            "comfy.patcher_extension": pe,
            "comfy.model_patcher": mp,
            "comfy.ldm": types.ModuleType("comfy.ldm"),
            "comfy.ldm.modules": types.ModuleType("comfy.ldm.modules"),
            "comfy.ldm.modules.attention": attn,
        }
    )


# ---------------------------------------------------------------------------------------------------------------
# Toy diffusion models (ComfyUI's class names, forward signatures and attention conventions; random weights)


def _executor(model, args, to):
    return WrapperExecutor(model._forward, model, get_all_wrappers(WrappersMP.DIFFUSION_MODEL, to)).execute(*args)


def _replace(to, kind, i, fn, args):
    patch = to.get("patches_replace", {}).get("dit", {}).get((kind, i))
    return fn(args) if patch is None else patch(args, {"original_block": fn})


class _WanBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.cq, self.ck, self.cv, self.co = (nn.Linear(dim, dim) for _ in range(4))
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.mod = nn.Linear(dim, 2 * dim)

    def forward(self, x, e, context, transformer_options):
        to = transformer_options
        scale, shift = self.mod(e)[:, None].chunk(2, -1)
        h = x * (1 + scale) + shift
        y = optimized_attention(self.q(h), self.k(h), self.v(h), heads=self.heads, transformer_options=to)
        x = x + self.o(y)
        c = optimized_attention(
            self.cq(x), self.ck(context), self.cv(context), heads=self.heads, transformer_options=to
        )
        x = x + self.co(c)
        return x + self.ffn(x)


class WanModel(nn.Module):
    def __init__(self, in_dim=4, dim=32, heads=2, layers=2, text_dim=16, patch_size=(1, 2, 2), seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.patch_size = patch_size
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=patch_size, stride=patch_size)
        self.text_embedding = nn.Linear(text_dim, dim)
        self.time = nn.Linear(1, dim)
        self.blocks = nn.ModuleList(_WanBlock(dim, heads) for _ in range(layers))
        self.head = nn.Linear(dim, in_dim * math.prod(patch_size))

    def forward(self, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options=None, **kw):
        return _executor(
            self, (x, timestep, context, clip_fea, time_dim_concat, transformer_options), transformer_options
        )

    def _forward(self, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options=None):
        b, c, t, h, w = x.shape
        x = self.patch_embedding(x)
        grid = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)
        e = self.time(timestep.float().view(-1, 1) / 1000)
        ctx = self.text_embedding(context)
        for i, block in enumerate(self.blocks):

            def run(a, block=block):
                return {"img": block(a["img"], a["vec"], a["txt"], a["transformer_options"])}

            x = _replace(
                transformer_options,
                "double_block",
                i,
                run,
                {"img": x, "txt": ctx, "vec": e, "transformer_options": transformer_options},
            )["img"]
        pt, ph, pw = self.patch_size
        x = self.head(x).view(b, *grid, c, pt, ph, pw)
        return x.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, c, t, h, w)


def _joint_attention(q, k, v, heads, mask, to):
    """Flux's ``attention``: ``[B, H, L, D]`` with heads positional and ``skip_reshape=True``."""
    return optimized_attention(q, k, v, heads, skip_reshape=True, mask=mask, transformer_options=to)


class _DoubleBlock(nn.Module):
    def __init__(self, dim, heads, flipped):
        super().__init__()
        self.heads, self.flipped_img_txt = heads, flipped
        self.img_qkv, self.txt_qkv = nn.Linear(dim, 3 * dim), nn.Linear(dim, 3 * dim)
        self.img_out, self.txt_out = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.mod = nn.Linear(dim, dim)

    def _qkv(self, lin, x):
        b, L, _ = x.shape
        return lin(x).view(b, L, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # 3 x [B, H, L, D]

    def forward(self, img, txt, vec, attn_mask, transformer_options):
        iq, ik, iv = self._qkv(self.img_qkv, img * (1 + self.mod(vec)[:, None]))
        tq, tk, tv = self._qkv(self.txt_qkv, txt)
        first, second = ((iq, ik, iv), (tq, tk, tv)) if self.flipped_img_txt else ((tq, tk, tv), (iq, ik, iv))
        q, k, v = (torch.cat((a, b), dim=2) for a, b in zip(first, second, strict=True))
        attn = _joint_attention(q, k, v, self.heads, attn_mask, transformer_options)  # [B, L, H*D]
        n = img.shape[1] if self.flipped_img_txt else txt.shape[1]
        a1, a2 = attn[:, :n], attn[:, n:]
        img_a, txt_a = (a1, a2) if self.flipped_img_txt else (a2, a1)
        txt += self.txt_out(txt_a)  # in place on the block's input, as ComfyUI's DoubleStreamBlock does
        return img + self.img_out(img_a), txt


class _SingleBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv, self.out, self.mlp = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x, vec, attn_mask, transformer_options):
        b, L, _ = x.shape
        q, k, v = self.qkv(x + vec[:, None]).view(b, L, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = _joint_attention(q, k, v, self.heads, attn_mask, transformer_options)
        x += self.out(attn) + torch.tanh(self.mlp(x))  # in place on the block's input, as ComfyUI's SingleStreamBlock
        return x


class _JointModel(nn.Module):
    flipped = False

    def __init__(self, in_dim=4, dim=32, heads=2, double=1, single=1, text_dim=16, patch_size=2, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.patch_size = patch_size
        pp = patch_size * patch_size if isinstance(patch_size, int) else math.prod(patch_size)
        self.img_in, self.txt_in = nn.Linear(in_dim * pp, dim), nn.Linear(text_dim, dim)
        self.time = nn.Linear(1, dim)
        self.double_blocks = nn.ModuleList(_DoubleBlock(dim, heads, self.flipped) for _ in range(double))
        self.single_blocks = nn.ModuleList(_SingleBlock(dim, heads) for _ in range(single))
        self.final = nn.Linear(dim, in_dim * pp)
        self.heads = heads

    def _patchify(self, x):
        if isinstance(self.patch_size, int):
            b, c, h, w = x.shape
            p = self.patch_size
            tokens = x.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), -1)
            return tokens, (h // p, w // p)
        b, c, t, h, w = x.shape
        pt, ph, pw = self.patch_size
        tokens = x.view(b, c, t // pt, pt, h // ph, ph, w // pw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return tokens.reshape(b, (t // pt) * (h // ph) * (w // pw), -1), (t // pt, h // ph, w // pw)

    def _unpatchify(self, tokens, grid, shape):
        b, c = shape[:2]
        if isinstance(self.patch_size, int):
            p = self.patch_size
            return tokens.view(b, *grid, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(shape)
        pt, ph, pw = self.patch_size
        return tokens.view(b, *grid, c, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(shape)

    def _blocks(self, img, txt, vec, mask, to):
        for i, block in enumerate(self.double_blocks):

            def run(a, block=block):
                out = block(a["img"], a["txt"], a["vec"], a.get("attn_mask"), a["transformer_options"])
                return {"img": out[0], "txt": out[1]}

            out = _replace(
                to,
                "double_block",
                i,
                run,
                {"img": img, "txt": txt, "vec": vec, "attn_mask": mask, "transformer_options": to},
            )
            img, txt = out["img"], out["txt"]
        x = torch.cat((img, txt) if self.flipped else (txt, img), 1)
        for i, block in enumerate(self.single_blocks):

            def run(a, block=block):
                return {"img": block(a["img"], a["vec"], a.get("attn_mask"), a["transformer_options"])}

            x = _replace(
                to, "single_block", i, run, {"img": x, "vec": vec, "attn_mask": mask, "transformer_options": to}
            )["img"]
        return x[:, : img.shape[1]] if self.flipped else x[:, txt.shape[1] :]


class Flux(_JointModel):
    def forward(
        self,
        x,
        timestep,
        context,
        y=None,
        guidance=None,
        ref_latents=None,
        control=None,
        transformer_options=None,
        **kw,
    ):
        args = (x, timestep, context, y, guidance, ref_latents, control, transformer_options)
        return _executor(self, args, transformer_options)

    def _forward(
        self, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None, transformer_options=None
    ):
        img, grid = self._patchify(x)
        img = self.img_in(img)
        if ref_latents is not None:  # Kontext: reference tokens appended after the image
            img = torch.cat([img] + [self.img_in(self._patchify(r)[0]) for r in ref_latents], 1)
        n = grid[0] * grid[1]
        vec = self.time(timestep.float().view(-1, 1) / 1000)
        out = self._blocks(img, self.txt_in(context), vec, None, transformer_options)[:, :n]
        return self._unpatchify(self.final(out), grid, x.shape)


class HunyuanVideo(_JointModel):
    flipped = True

    def __init__(self, **kw):
        kw.setdefault("patch_size", (1, 2, 2))
        super().__init__(**kw)
        self.refiner = nn.Linear(kw.get("text_dim", 16), 3 * kw.get("text_dim", 16))

    def forward(
        self,
        x,
        timestep,
        context,
        y=None,
        txt_byt5=None,
        guidance=None,
        attention_mask=None,
        transformer_options=None,
        **kw,
    ):
        args = (x, timestep, context, y, txt_byt5, guidance, attention_mask, transformer_options)
        return _executor(self, args, transformer_options)

    def _forward(
        self, x, timestep, context, y=None, txt_byt5=None, guidance=None, attention_mask=None, transformer_options=None
    ):
        to = transformer_options
        b, L, _ = context.shape
        # The text refiner: self-attention over the text alone, with its padding mask, before the blocks.
        rq, rk, rv = self.refiner(context).view(b, L, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        tmask = None if attention_mask is None else (attention_mask[:, None, None, :] - 1).float() * 1e9
        context = context + optimized_attention(
            rq, rk, rv, self.heads, mask=tmask, skip_reshape=True, transformer_options=to
        )
        img, grid = self._patchify(x)
        img = self.img_in(img)
        vec = self.time(timestep.float().view(-1, 1) / 1000)
        mask = None
        if attention_mask is not None:  # padded text keys, additive [1, 1, L_img + L_txt], as HunyuanVideo builds
            mask = torch.zeros(1, 1, img.shape[1] + L)
            mask[:, 0, img.shape[1] :] = (attention_mask[:1].float() - 1) * torch.finfo(torch.float32).max
        out = self._blocks(img, self.txt_in(context), vec, mask, to)
        return self._unpatchify(self.final(out), grid, x.shape)


class BaseModel(nn.Module):
    def __init__(self, diffusion_model):
        super().__init__()
        self.diffusion_model = diffusion_model


class WAN21(BaseModel):
    pass


class FluxBase(BaseModel):  # ComfyUI names both the base model and the diffusion model "Flux"
    pass


FluxBase.__name__ = "Flux"


class HunyuanVideoBase(BaseModel):
    pass


HunyuanVideoBase.__name__ = "HunyuanVideo"


def patcher(kind: str, **kw) -> ModelPatcher:
    dm = {"wan": WanModel, "flux": Flux, "hunyuan": HunyuanVideo}[kind](**kw)
    base = {"wan": WAN21, "flux": FluxBase, "hunyuan": HunyuanVideoBase}[kind]
    return ModelPatcher(base(dm))


# ---------------------------------------------------------------------------------------------------------------
# The sampling path


class Guider:
    def __init__(self, model_patcher):
        self.model_patcher = model_patcher


def _nested_copy(d):
    return {
        k: _nested_copy(v) if isinstance(v, dict) else (list(v) if isinstance(v, list) else v) for k, v in d.items()
    }


def sample(mp: ModelPatcher, noise, sigmas, cond, uncond, *, cfg=3.0, batched=True, extra=None, timestep_scale=1000,
           midpoint=False):  # fmt: skip
    """Euler over ``sigmas`` with classifier-free guidance; ``cond``/``uncond`` are the text contexts ``[1, L, C]``.

    ``batched``: cond and uncond in one forward (``cond_or_uncond [0, 1]``), else two forwards.
    ``extra``: more keyword arguments of the diffusion model's forward.
    ``midpoint``: a second-order step that also calls the model halfway between two schedule entries, at a sigma
    that is not in ``sample_sigmas`` (as ComfyUI's dpmpp_2s_ancestral and dpmpp_sde do).
    """
    model_options = copy.deepcopy(mp.model_options)
    to_base = model_options.setdefault("transformer_options", {})
    wrappers = to_base.setdefault("wrappers", {})
    for t, d in mp.wrappers.items():
        for k, ws in d.items():
            wrappers.setdefault(t, {}).setdefault(k, []).extend(ws)
    dm = mp.model.diffusion_model
    extra = extra or {}

    def forward(x, sigma, contexts, kinds):
        to = _nested_copy(to_base)
        to["cond_or_uncond"] = list(kinds)
        to["sigmas"] = sigma.expand(len(kinds))
        t = (sigma * timestep_scale).expand(x.shape[0])
        return dm(x, t, torch.cat(contexts), transformer_options=to, **extra)

    def outer(noise, sigmas):
        to_base["sample_sigmas"] = sigmas
        x = noise

        def guided(x, s):
            if batched:
                c, u = forward(torch.cat([x, x]), s, [cond, uncond], [0, 1]).chunk(2)
            else:
                c = forward(x, s, [cond], [0])
                u = forward(x, s, [uncond], [1])
            return u + cfg * (c - u)

        for i in range(len(sigmas) - 1):
            s = sigmas[i : i + 1]
            d = guided(x, s)
            if midpoint:
                mid = (sigmas[i : i + 1] + sigmas[i + 1 : i + 2]) / 2
                d = guided(x + (mid - s) * d, mid)
            x = x + (sigmas[i + 1] - sigmas[i]) * d
        return x

    ws = get_all_wrappers(WrappersMP.OUTER_SAMPLE, model_options, is_model_options=True)
    with torch.no_grad():
        return WrapperExecutor(outer, Guider(mp), ws).execute(noise, sigmas)
