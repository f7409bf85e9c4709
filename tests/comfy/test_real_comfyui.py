"""Acceptance of the ComfyUI node against REAL ComfyUI code, not the stand-ins: skipped unless ``COMFYUI_PATH`` names a
ComfyUI checkout (0.3.60 or later), e.g.::

    COMFYUI_PATH=/path/to/ComfyUI python -m pytest -q -p no:logging tests/comfy/test_real_comfyui.py

The Python running it needs what ComfyUI's model, sampler and node API import on CPU: torch, einops, safetensors,
scipy, torchsde, psutil, tqdm, pillow, pyyaml, transformers and av (``comfy_api``). A missing (or CUDA-only)
torchvision is replaced by an empty placeholder: only models this test does not build use it.

What runs: ComfyUI's own custom-node loader loads the node folder (``comfyui/``, the v3 entry point) and ComfyUI's
executor function runs both nodes; tiny randomly initialised Wan 2.1, Flux and HunyuanVideo models are built by
ComfyUI's own ``supported_models`` / ``model_base`` classes, wrapped in a real ``ModelPatcher`` and sampled through
``comfy.sample.sample`` (the KSampler's path: CFGGuider, OUTER_SAMPLE / DIFFUSION_MODEL wrappers, batched cond and
uncond, ``sample_sigmas`` / ``sigmas`` / ``cond_or_uncond``), under ``torch.inference_mode`` as ComfyUI's executor runs
every node. The ``comfy`` stand-ins the other tests use are taken out of ``sys.modules`` for this module and put back
after it.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import importlib.machinery
import importlib.util
import math
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from accel.hosts.comfy import host_of, model_stats

ROOT = Path(__file__).resolve().parents[2]
COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")

pytestmark = pytest.mark.skipif(
    not COMFYUI_PATH,
    reason="set COMFYUI_PATH to a ComfyUI checkout (0.3.60+) to run the node against real ComfyUI code",
)

ACCEL_OVERRIDES = "block_size=16, min_speedup=0, backend='gather', dense_layers=0"  # sparse calls on tiny grids
# Fallbacks each family must show, and nothing else: Wan's text is cross-attention (its own calls), HunyuanVideo's
# token refiner makes two text-only calls per forward before the blocks; Flux has none.
EXPECTED_FALLBACKS = {"wan": {"cross_attention"}, "flux": set(), "hunyuan": {"layout_mismatch"}}
ATTENTION = {"wan": "radial", "flux": "draft", "hunyuan": "radial"}
SPARSE_PRESETS = [
    ("wan", "radial"),
    ("wan", "draft"),
    ("wan", "rettention"),
    ("wan", "taylorseer"),
    ("wan", "radial+taylorseer"),
    ("flux", "draft"),
    ("flux", "rettention"),
    ("flux", "taylorseer"),
    ("hunyuan", "radial"),
    ("hunyuan", "draft"),
    ("hunyuan", "rettention"),
    ("hunyuan", "taylorseer"),
]


# ---------------------------------------------------------------------------------------------------------------
# Real ComfyUI in this process


def _is_comfy_module(name: str, mod, root: str) -> bool:
    if name.split(".")[0] in ("comfy", "comfy_api", "comfy_execution", "comfy_extras", "comfy_config"):
        return True
    paths = [getattr(mod, "__file__", None)]
    try:  # a package's folders (namespace packages have no __file__); some modules' __path__ is not a list
        paths += list(mod.__path__)
    except (AttributeError, TypeError):
        pass
    return any(isinstance(p, str) and p.startswith(root + os.sep) for p in paths)


def _torchvision_placeholder() -> list[str]:
    """ComfyUI's model_base imports torchvision.transforms for models not built here; without a usable torchvision
    (none, or a CUDA build on a CPU torch) an empty placeholder stands in. Returns the names it added."""
    try:
        import torchvision  # noqa: F401

        return []
    except Exception:  # ImportError, or RuntimeError from a torchvision built for another torch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    tv = types.ModuleType("torchvision")
    tv.__path__ = []
    tv.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.transforms.__spec__ = importlib.machinery.ModuleSpec("torchvision.transforms", None)
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tv.transforms})
    return ["torchvision", "torchvision.transforms"]


@pytest.fixture(scope="module")
def comfy():
    root = str(Path(COMFYUI_PATH).resolve())
    if not (Path(root) / "comfy" / "model_patcher.py").is_file():
        pytest.skip(f"COMFYUI_PATH={COMFYUI_PATH!r} is not a ComfyUI checkout (no comfy/model_patcher.py)")
    saved = {n: m for n, m in list(sys.modules.items()) if _is_comfy_module(n, m, root)}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, root)
    placeholder = _torchvision_placeholder()
    nodes_module = importlib.import_module("accel.hosts.comfy_nodes")
    try:
        from comfy.cli_args import args

        args.cpu = True  # before comfy.model_management is imported, as `python main.py --cpu`
        ns = types.SimpleNamespace(root=root)
        for name in ("comfy.model_management", "comfy.supported_models", "comfy.model_patcher", "comfy.sample",
                     "comfy.samplers", "nodes", "execution"):  # fmt: skip
            setattr(ns, name.split(".")[-1], importlib.import_module(name))
        from comfy_api.latest import io

        ns.io = io
        ns.accel_nodes = importlib.reload(nodes_module)  # now with the v3 entry point of this ComfyUI
        assert ns.accel_nodes.comfy_entrypoint is not None, "comfy_api.latest did not import"
        yield ns
    finally:
        for name, mod in list(sys.modules.items()):
            if _is_comfy_module(name, mod, root) or name in placeholder or name.endswith("_x_comfyui"):
                del sys.modules[name]
        sys.path.remove(root)
        sys.modules.update(saved)
        importlib.reload(nodes_module)  # back to what the other tests expect (no comfy_api: classic mappings)


# ---------------------------------------------------------------------------------------------------------------
# Tiny models of ComfyUI's own classes


def _init_weights(module: torch.nn.Module, seed: int = 0) -> None:
    """ComfyUI's ops leave weights uninitialised: a seeded, scaled normal init (norm scales around one)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(math.prod(p.shape[1:])))
            elif "norm" in name or name.endswith("scale"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def build(c, family: str):
    """A ModelPatcher around a tiny model of ``family``: 16 latent channels, width 64, 2 heads, 2 blocks."""
    sm = c.supported_models
    if family == "wan":
        config = sm.WAN21_T2V(dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=512,
                                   in_dim=16, dim=64, ffn_dim=128, freq_dim=256, text_dim=32, out_dim=16, num_heads=2,
                                   num_layers=2, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True,
                                   eps=1e-6))  # fmt: skip
    elif family == "flux":
        config = sm.Flux(dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32,
                              hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=1, depth_single_blocks=1,
                              axes_dim=[8, 12, 12], theta=10000, patch_size=2, qkv_bias=True,
                              guidance_embed=True))  # fmt: skip
    else:
        config = sm.HunyuanVideo(dict(image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=32,
                                      context_in_dim=32, hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=1,
                                      depth_single_blocks=1, axes_dim=[8, 12, 12], theta=256, patch_size=[1, 2, 2],
                                      qkv_bias=True, guidance_embed=True, byt5=False, meanflow=False))  # fmt: skip
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, device=torch.device("cpu"))
    _init_weights(model.diffusion_model)
    mm = c.model_management
    return c.model_patcher.ModelPatcher(model, mm.get_torch_device(), mm.unet_offload_device())


def conds(family: str, n: int = 6, seed: int = 1, **extra):
    """Positive and negative conditioning as ComfyUI's text encoders hand them on: ``[[context, {...}]]``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        opts = dict(extra)
        if family != "wan":
            opts["pooled_output"] = torch.randn(1, 32, generator=g)
        out.append([[torch.randn(1, n, 32, generator=g), opts]])
    return out


def latent(family: str) -> torch.Tensor:
    # video 4 x 8 x 16 latents -> 4 x 4 x 8 = 128 tokens; image 16 x 32 -> 8 x 16 = 128 tokens
    return torch.zeros(1, 16, 16, 32) if family == "flux" else torch.zeros(1, 16, 4, 8, 16)


def sample(c, model, family: str, *, steps: int = 4, sampler: str = "euler", cfg: float = 3.0, cond=None):
    """The KSampler's path (comfy.sample.sample), under inference mode as ComfyUI's executor runs nodes."""
    pos, neg = cond or conds(family)
    lat = latent(family)
    noise = c.sample.prepare_noise(lat, 0)
    with torch.inference_mode():
        return c.sample.sample(model, noise, steps, cfg, sampler, "simple", pos, neg, lat, disable_pbar=True, seed=0)


def run_node(c, node_id: str, **inputs):
    """One node through ComfyUI's executor function (``execution.get_output_data``), as a prompt would run it."""
    if node_id not in c.nodes.NODE_CLASS_MAPPINGS:  # ComfyUI loads the node folder once, at start-up
        assert asyncio.run(c.nodes.load_custom_node(str(ROOT / "comfyui")))
    cls = c.nodes.NODE_CLASS_MAPPINGS[node_id]
    batch = {k: [v] for k, v in inputs.items()}  # ComfyUI hands each input as a list (one entry: no batch of lists)
    with torch.inference_mode():
        out, ui, _, pending = asyncio.run(c.execution.get_output_data("test", node_id, cls, batch))
    assert not pending
    return [o[0] for o in out], ui


def accelerate(c, model, preset: str, **widgets):
    (clone,), _ = run_node(c, c.accel_nodes.ACCELERATE_ID, model=model, preset=preset, **widgets)
    return clone


def overrides(preset: str) -> str:
    parts = set(preset.split("+"))
    if not parts & {"radial", "draft", "rettention", "sparse-vdit"}:
        return ""
    return ACCEL_OVERRIDES + (", patch=(4, 4)" if "draft" in parts else "")


def snapshot(model) -> dict:
    return {
        "model_options": copy.deepcopy(model.model_options),
        "wrappers": {t: {k: list(ws) for k, ws in d.items()} for t, d in model.wrappers.items()},
        "patches": dict(model.patches),
        "object_patches": dict(model.object_patches),
        "weights": {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()},
    }


def assert_untouched(model, before: dict) -> None:
    after = snapshot(model)
    for key in ("model_options", "wrappers", "patches", "object_patches"):
        assert after[key] == before[key], key
    assert all(torch.equal(before["weights"][k], v) for k, v in after["weights"].items())


def fallbacks(stats: dict) -> set[str]:
    return {k.split(":", 1)[1] for k in stats if k.startswith("fallback:")}


# ---------------------------------------------------------------------------------------------------------------
# The checks


def test_comfyui_loads_the_node_folder_with_its_v3_entry_point(comfy):
    c = comfy
    assert asyncio.run(c.nodes.load_custom_node(str(ROOT / "comfyui"))) is True
    ids = (c.accel_nodes.ACCELERATE_ID, c.accel_nodes.STATS_ID)
    for node_id in ids:
        cls = c.nodes.NODE_CLASS_MAPPINGS[node_id]
        assert issubclass(cls, c.io.ComfyNode), cls  # the v3 node, not the classic fallback
        assert c.nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id] == c.accel_nodes.DISPLAY_NAMES[node_id]
        info = cls.GET_NODE_INFO_V1()  # what ComfyUI sends the frontend
        assert info["category"] == c.accel_nodes.CATEGORY
    stats = c.nodes.NODE_CLASS_MAPPINGS[c.accel_nodes.STATS_ID].GET_NODE_INFO_V1()
    assert stats["output"] == ["LATENT", "STRING"] and stats["output_name"] == ["latent", "report"], stats
    acc = c.nodes.NODE_CLASS_MAPPINGS[c.accel_nodes.ACCELERATE_ID].INPUT_TYPES()
    classic = c.accel_nodes.AccelerateModelNode.INPUT_TYPES()
    for group in ("required", "optional"):
        assert set(acc[group]) == set(classic[group]), group


@pytest.mark.parametrize("family", ["wan", "flux", "hunyuan"])
def test_every_step_dense_is_bit_identical_to_no_node(comfy, family):
    c = comfy
    model = build(c, family)
    before = snapshot(model)
    ref = sample(c, model, family)
    att = ATTENTION[family]
    for preset, widgets in [
        ("dense", {}),
        (att, {"dense_warmup": 1.0}),
        (f"{att}+taylorseer", {"dense_warmup": 1.0, "cache_interval": 1}),
    ]:
        clone = accelerate(c, model, preset, overrides=overrides(preset), **widgets)
        out = sample(c, clone, family)
        assert torch.equal(out, ref), (family, preset, float((out - ref).abs().max()))
        stats = model_stats(clone)
        if preset != "dense":
            assert stats["dense"] > 0 and not stats.get("sparse"), stats
            assert fallbacks(stats) == EXPECTED_FALLBACKS[family], stats
        assert_untouched(model, before)


@pytest.mark.parametrize("family,preset", SPARSE_PRESETS, ids=[f"{f}-{p}" for f, p in SPARSE_PRESETS])
def test_sparse_and_cached_runs(comfy, family, preset, monkeypatch):
    c = comfy
    from accel.caches.taylorseer import TaylorLadder

    residuals = []
    update = TaylorLadder.update

    def spy(self, value, position, differences=True):
        residuals.append(float(value.abs().max()))
        return update(self, value, position, differences)

    monkeypatch.setattr(TaylorLadder, "update", spy)
    model = build(c, family)
    before = snapshot(model)
    clone = accelerate(c, model, preset, dense_warmup=0.25, cache_interval=2, overrides=overrides(preset))
    out = sample(c, clone, family, steps=6)
    assert torch.isfinite(out).all()
    assert_untouched(model, before)

    stats = model_stats(clone)
    parts = set(preset.split("+"))
    if parts - {"taylorseer"}:
        assert stats.get("sparse", 0) > 0, stats
        assert 0 < stats["mean_sparse_density"] <= 1, stats
    if "taylorseer" in parts:
        assert stats["cache:predicted"] > 0 and stats["cache:computed"] > 0, stats
        # every stream's residual (ComfyUI's joint blocks add to their inputs in place) is what the block added
        assert residuals and min(residuals) > 0, residuals
    assert fallbacks(stats) <= EXPECTED_FALLBACKS[family], stats
    assert stats["runs"] == 1

    # the Stats node, through ComfyUI's executor
    (latent_out, text), ui = run_node(c, c.accel_nodes.STATS_ID, model=clone, latent={"samples": out})
    assert latent_out["samples"] is out and ui["text"] == [text], ui
    assert text.startswith(f"diffusion-fast: {preset} on ") and "runs=1" in text, text
    if parts - {"taylorseer"}:
        assert "sparse=" in text and "mean sparse density" in text, text
    if "taylorseer" in parts:
        assert "predicted" in text, text
    for reason in fallbacks(stats):
        assert f"fallback:{reason}=" in text, text


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "dpmpp_2s_ancestral", "dpmpp_sde", "uni_pc"])
def test_steps_follow_sample_sigmas_whatever_the_sampler(comfy, sampler):
    c = comfy
    model = build(c, "wan")
    clone = c.accel_nodes.accelerate(model, "radial+taylorseer", dense_warmup=0.25, cache_interval=2,
                                     overrides=ACCEL_OVERRIDES)  # fmt: skip
    host = host_of(clone)
    seen = []
    resolve = host.resolver.resolve

    def record(*a, **kw):
        info = resolve(*a, **kw)
        seen.append((info.step_index, info.num_steps))
        return info

    host.resolver.resolve = record
    out = sample(c, clone, "wan", steps=4, sampler=sampler)
    assert torch.isfinite(out).all()
    # every forward maps to one of the 4 steps, in order (multi-stage samplers call the model between entries too)
    assert seen and all(n == 4 and 0 <= i < 4 for i, n in seen), seen
    assert [i for i, _ in seen] == sorted(i for i, _ in seen), seen
    stats = model_stats(clone)
    assert stats["sparse"] > 0 and stats["cache:predicted"] > 0, stats
    assert fallbacks(stats) == {"cross_attention"}, stats  # under inference mode: no autograd fallback


def test_hunyuan_padded_text_mask_is_key_padding(comfy):
    # HunyuanVideo's text encoder hands on an attention mask (padded text): the refiner's calls fall back, the blocks'
    # additive [1, 1, L] mask is key padding the sparse path takes. CFG 1: ComfyUI's HunyuanVideo cannot batch masks.
    c = comfy
    model = build(c, "hunyuan")
    mask = torch.ones(1, 6, dtype=torch.long)
    mask[:, 4:] = 0
    cond = conds("hunyuan", attention_mask=mask)
    ref = sample(c, model, "hunyuan", cfg=1.0, cond=cond)
    dense = accelerate(c, model, "radial", dense_warmup=1.0, overrides=ACCEL_OVERRIDES)
    assert torch.equal(sample(c, dense, "hunyuan", cfg=1.0, cond=cond), ref)
    clone = accelerate(c, model, "radial", dense_warmup=0.25, overrides=ACCEL_OVERRIDES)
    assert torch.isfinite(sample(c, clone, "hunyuan", cfg=1.0, cond=cond)).all()
    stats = model_stats(clone)
    assert stats["sparse"] > 0 and fallbacks(stats) == {"layout_mismatch"}, stats


def test_flux_kontext_reference_tokens_fall_back(comfy):
    c = comfy
    model = build(c, "flux")
    ref_latent = torch.randn(1, 16, 16, 32, generator=torch.Generator().manual_seed(3))
    cond = conds("flux", reference_latents=[ref_latent])
    ref = sample(c, model, "flux", cond=cond)
    clone = accelerate(c, model, "draft", dense_warmup=0.25, overrides=overrides("draft"))
    assert torch.equal(sample(c, clone, "flux", cond=cond), ref)  # every call fell back: ComfyUI's own attention
    stats = model_stats(clone)
    assert not stats.get("sparse") and fallbacks(stats) == {"extra_tokens"}, stats


def test_classic_nodes_run_through_comfyui_executor(comfy):
    c = comfy
    model = build(c, "wan")
    node = c.accel_nodes.AccelerateModelNode()
    inputs = {"model": [model], "preset": ["radial"], "decay": [0.0], "sparsity": [0.0], "dense_warmup": [0.25],
              "cache_interval": [0], "overrides": [ACCEL_OVERRIDES]}  # fmt: skip
    out, _, _, _ = asyncio.run(c.execution.get_output_data("test", "classic", node, inputs))
    clone = out[0][0]
    samples = sample(c, clone, "wan")
    out, ui, _, _ = asyncio.run(
        c.execution.get_output_data("test", "stats", c.accel_nodes.StatsNode(), {"model": [clone],
                                                                                 "latent": [{"samples": samples}]})
    )  # fmt: skip
    assert out[1][0].startswith("diffusion-fast: radial on wan") and ui["text"] == [out[1][0]], (out, ui)
