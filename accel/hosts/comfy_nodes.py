"""The ComfyUI nodes of diffusion-fast: "Diffusion Fast: Accelerate Model" and "Diffusion Fast: Stats".

ComfyUI loads them through the node folder's ``__init__.py`` (``comfyui/`` in the repository), which re-exports this
module's names. Where ComfyUI has the v3 node API (``comfy_api.latest``) the nodes are ``io.ComfyNode`` classes
behind :func:`comfy_entrypoint` and ``NODE_CLASS_MAPPINGS`` is None (ComfyUI prefers classic mappings when both are
set); elsewhere the classic classes are exported in ``NODE_CLASS_MAPPINGS``. Both formats share one implementation,
:func:`accelerate` and :func:`report`. Importing this module never needs ``comfy``: the host imports the patcher's
constants only when a model is accelerated.
"""

from __future__ import annotations

import ast
from typing import Any

from accel.attention_kernels.api import BACKENDS

from ..errors import ConfigError
from .comfy import EXPERTS, accelerate_model, format_stats, model_stats

ACCELERATE_ID = "DiffusionFastAccelerateModel"
STATS_ID = "DiffusionFastStats"
CATEGORY = "advanced/model/diffusion-fast"

PRESET_CHOICES = (
    "radial",
    "draft",
    "sparse-vdit",
    "rettention",
    "taylorseer",
    "radial+taylorseer",
    "draft+taylorseer",
    "sparse-vdit+taylorseer",
    "rettention+taylorseer",
    "dense",
)

TOOLTIPS = {
    "model": "The diffusion model (Wan 2.1/2.2, HunyuanVideo, Flux). It is cloned; the input stays untouched.",
    "preset": "Attention method and/or TaylorSeer cache; 'dense' installs nothing. Radial needs a video model.",
    "decay": "Radial: window decay factor (0 = the model's published value: Wan2.1 0.2, Wan2.2 0.8, Hunyuan 0.95).",
    "sparsity": "Draft: fraction of patch pairs dropped per head (0 = the model's value: Wan 0.75, Hunyuan 0.9).",
    "dense_warmup": "Attention: leading fraction of steps run dense (-1 = the model's published value).",
    "cache_interval": "TaylorSeer: a full step every N steps, predicted in between (0 = the model's value); "
    "with a threshold, the longest gap between full steps.",
    "threshold": "TaylorSeer: adaptive schedule, a step runs in full when the first block's forecast error exceeds "
    "this (-1 = the model's value: Wan 0.24, others fixed; 0 = the fixed cache_interval schedule).",
    "plan_file": "Sparse-vDiT: path of the calibration plan (JSON) for this model, resolution, frames and steps.",
    "expert": "Wan 2.2 A14B: which expert this model is (its published settings and per-layer state differ).",
    "backend": "Sparse kernel: auto (the fastest in this device's measured table: Triton on CUDA, sdpa on CPU), "
    "triton, flex, sdpa, gather, reference.",
    "overrides": "Advanced: more config fields as 'name=value, ...' (e.g. 'block_size=64, dense_layers=2').",
}


def parse_overrides(text: str) -> dict[str, Any]:
    """``"a=1, b=0.5, sink=False, patch=(8, 16)"`` -> ``{"a": 1, "b": 0.5, ...}`` (Python literals; bare words are
    strings)."""
    out: dict[str, Any] = {}
    text = (text or "").strip()
    if not text:
        return out
    try:  # a whole call's keyword list parses as one expression, commas inside tuples included
        call = ast.parse(f"f({text})", mode="eval").body
    except SyntaxError as e:
        raise ConfigError(f"overrides must look like 'name=value, name=value', got {text!r}") from e
    if not isinstance(call, ast.Call) or call.args or any(kw.arg is None for kw in call.keywords):
        raise ConfigError(f"overrides must look like 'name=value, name=value', got {text!r}")
    for kw in call.keywords:
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            if not isinstance(kw.value, ast.Name):
                raise ConfigError(f"override {kw.arg} must be a literal value") from None
            out[kw.arg] = kw.value.id
    return out


def node_overrides(preset: str, *, decay=0.0, sparsity=0.0, dense_warmup=-1.0, cache_interval=0, threshold=-1.0,
                   plan_file="", backend="auto", overrides="") -> dict[str, Any]:  # fmt: skip
    """Config overrides from the node's widgets: each widget applies only to the parts of ``preset`` it belongs to,
    and its "model default" value sets nothing."""
    parts = set(preset.split("+"))
    attention = parts & {"radial", "draft", "sparse-vdit", "rettention"}
    out: dict[str, Any] = {}
    if "radial" in parts and decay > 0:
        out["decay"] = float(decay)
    if "draft" in parts and sparsity > 0:
        out["sparsity"] = float(sparsity)
    if attention and dense_warmup >= 0:
        out["dense_step_fraction"] = float(dense_warmup)
    if attention and backend != "auto":
        out["backend"] = backend
    if "sparse-vdit" in parts and plan_file.strip():
        out["plan"] = plan_file.strip()
    if "taylorseer" in parts and cache_interval > 0:
        out["interval"] = int(cache_interval)
    if "taylorseer" in parts and threshold >= 0:
        out["threshold"] = float(threshold) if threshold > 0 else None
    out.update(parse_overrides(overrides))
    return out


def accelerate(model, preset: str = "radial", decay: float = 0.0, sparsity: float = 0.0, dense_warmup: float = -1.0,
               cache_interval: int = 0, plan_file: str = "", expert: str = "single", backend: str = "auto",
               overrides: str = "", threshold: float = -1.0):  # fmt: skip
    """The Accelerate node: a patched clone of ``model`` (weights shared, ``model`` untouched)."""
    widgets = {"decay": decay, "sparsity": sparsity, "dense_warmup": dense_warmup, "cache_interval": cache_interval,
               "threshold": threshold}  # fmt: skip
    kw = node_overrides(preset, plan_file=plan_file, backend=backend, overrides=overrides, **widgets)
    return accelerate_model(model, preset, expert=expert, **kw)


def report(model) -> str:
    """The Stats node's text: what the last sampling run with ``model`` did."""
    return "diffusion-fast: " + format_stats(model_stats(model))


# ----------------------------------------------------------------------------------------------------------------
# Classic node format


class AccelerateModelNode:
    """Classic ComfyUI node: MODEL + preset -> accelerated MODEL."""

    DESCRIPTION = (
        "Block-sparse attention (radial, draft, sparse-vdit, rettention) and TaylorSeer feature caching for "
        "Wan, HunyuanVideo and Flux. Returns a patched clone sharing the weights."
    )
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 (ComfyUI's name)
        t = TOOLTIPS
        return {
            "required": {
                "model": ("MODEL", {"tooltip": t["model"]}),
                "preset": (list(PRESET_CHOICES), {"default": "radial", "tooltip": t["preset"]}),
                "decay": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 5.0, "step": 0.05, "tooltip": t["decay"]}),
                "sparsity": (
                    "FLOAT",
                    {"default": 0.0, "min": 0.0, "max": 0.99, "step": 0.01, "tooltip": t["sparsity"]},
                ),  # fmt: skip
                "dense_warmup": (
                    "FLOAT",
                    {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.01, "tooltip": t["dense_warmup"]},
                ),  # fmt: skip
                "cache_interval": (
                    "INT",
                    {"default": 0, "min": 0, "max": 50, "step": 1, "tooltip": t["cache_interval"]},
                ),  # fmt: skip
            },
            "optional": {
                "plan_file": ("STRING", {"default": "", "tooltip": t["plan_file"]}),
                "expert": (list(EXPERTS), {"default": "single", "tooltip": t["expert"]}),
                "backend": (list(BACKENDS), {"default": "auto", "tooltip": t["backend"]}),
                "overrides": ("STRING", {"default": "", "tooltip": t["overrides"]}),
                "threshold": (
                    "FLOAT",
                    {"default": -1.0, "min": -1.0, "max": 10.0, "step": 0.01, "tooltip": t["threshold"]},
                ),  # fmt: skip
            },
        }

    def patch(self, model, **kwargs):
        return (accelerate(model, **kwargs),)


class StatsNode:
    """Classic ComfyUI node: shows what the last sampling run with an accelerated MODEL did; the LATENT input ties
    it after the sampler and passes through."""

    DESCRIPTION = "Reports sparse / dense / fallback attention calls (with reasons) and TaylorSeer cache hits."
    RETURN_TYPES = ("LATENT", "STRING")
    RETURN_NAMES = ("latent", "report")
    FUNCTION = "report"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 (ComfyUI's name)
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The MODEL that came out of 'Diffusion Fast: Accelerate Model'."}),
                "latent": ("LATENT", {"tooltip": "The sampler's output: the report runs after sampling."}),
            }
        }

    def report(self, model, latent):
        text = report(model)
        return {"ui": {"text": [text]}, "result": (latent, text)}


CLASSIC_NODES = {ACCELERATE_ID: AccelerateModelNode, STATS_ID: StatsNode}
DISPLAY_NAMES = {ACCELERATE_ID: "Diffusion Fast: Accelerate Model", STATS_ID: "Diffusion Fast: Stats"}

# ----------------------------------------------------------------------------------------------------------------
# v3 node format (ComfyUI with comfy_api.latest)

try:
    from comfy_api.latest import ComfyExtension, io
except ImportError:  # an older ComfyUI, or no ComfyUI at all (tests, plain `import accel.hosts.comfy_nodes`)
    io = None


def _v3_nodes():
    t = TOOLTIPS

    class AccelerateModel(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(
                node_id=ACCELERATE_ID,
                display_name=DISPLAY_NAMES[ACCELERATE_ID],
                category=CATEGORY,
                description=AccelerateModelNode.DESCRIPTION,
                inputs=[
                    io.Model.Input("model", tooltip=t["model"]),
                    io.Combo.Input("preset", options=list(PRESET_CHOICES), default="radial", tooltip=t["preset"]),
                    io.Float.Input("decay", default=0.0, min=0.0, max=5.0, step=0.05, tooltip=t["decay"]),
                    io.Float.Input("sparsity", default=0.0, min=0.0, max=0.99, step=0.01, tooltip=t["sparsity"]),
                    io.Float.Input(
                        "dense_warmup", default=-1.0, min=-1.0, max=1.0, step=0.01, tooltip=t["dense_warmup"]
                    ),  # fmt: skip
                    io.Int.Input("cache_interval", default=0, min=0, max=50, step=1, tooltip=t["cache_interval"]),
                    io.String.Input("plan_file", default="", optional=True, tooltip=t["plan_file"]),
                    io.Combo.Input(
                        "expert", options=list(EXPERTS), default="single", optional=True, tooltip=t["expert"]
                    ),  # fmt: skip
                    io.Combo.Input(
                        "backend", options=list(BACKENDS), default="auto", optional=True, tooltip=t["backend"]
                    ),  # fmt: skip
                    io.String.Input("overrides", default="", optional=True, tooltip=t["overrides"]),
                    io.Float.Input(
                        "threshold", default=-1.0, min=-1.0, max=10.0, step=0.01, optional=True, tooltip=t["threshold"]
                    ),  # fmt: skip
                ],
                outputs=[io.Model.Output(tooltip="The accelerated clone.")],
            )

        @classmethod
        def execute(cls, model, **kwargs):
            return io.NodeOutput(accelerate(model, **kwargs))

    class Stats(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(
                node_id=STATS_ID,
                display_name=DISPLAY_NAMES[STATS_ID],
                category=CATEGORY,
                description=StatsNode.DESCRIPTION,
                is_output_node=True,
                inputs=[
                    io.Model.Input("model", tooltip="The MODEL that came out of 'Diffusion Fast: Accelerate Model'."),
                    io.Latent.Input("latent", tooltip="The sampler's output: the report runs after sampling."),
                ],
                # v3 ids must differ from the inputs' (ComfyUI refuses the node otherwise); outputs are named by
                # display_name (else by type)
                outputs=[
                    io.Latent.Output("latent_out", display_name="latent"),
                    io.String.Output("report", display_name="report"),
                ],
            )

        @classmethod
        def execute(cls, model, latent):
            text = report(model)
            return io.NodeOutput(latent, text, ui={"text": (text,)})

    return [AccelerateModel, Stats]


if io is not None:
    V3_NODES = _v3_nodes()

    class DiffusionFastExtension(ComfyExtension):
        async def get_node_list(self):
            return list(V3_NODES)

    def comfy_entrypoint():
        return DiffusionFastExtension()

    NODE_CLASS_MAPPINGS = None  # ComfyUI loads the v3 entry point only when no classic mappings are set
    NODE_DISPLAY_NAME_MAPPINGS = None
else:
    V3_NODES = []
    comfy_entrypoint = None
    NODE_CLASS_MAPPINGS = dict(CLASSIC_NODES)
    NODE_DISPLAY_NAME_MAPPINGS = dict(DISPLAY_NAMES)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "comfy_entrypoint"]
