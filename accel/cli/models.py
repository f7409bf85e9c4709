"""What ``--model`` names: the embedded offline model(s), a local diffusers pipeline folder or a Hugging Face Hub repo.

``resolve_model(name)`` finds out which it is and reads the pipeline's ``model_index.json`` without loading any
weights, so the request can be checked first (preset support, size rules, output format, calibration plans).
``load_pipeline(source, dtype)`` then builds or loads it. Errors are :class:`ModelError`, whose message says what
to do instead.

The Hub is asked only when it answers quickly: before the first request a short TCP connection to the Hub (or to
the HTTPS proxy) decides whether it is reachable (:data:`accel.cli.hub.HUB_PROBE_TIMEOUT_S`). When it is not, or when
``HF_HUB_OFFLINE`` is set, only the local Hugging Face cache is used, so a machine without network gets the message
that says how to proceed offline at once instead of after huggingface_hub's retries (about a minute).

Model families' facts (sizes, example repos, the tiny test configuration) live in their ``ModelSpec``
(``accel.pipelines``); this module only names the embedded model built from one.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accel.errors import AccelError

from .errors import PROG
from .hub import _hub_file, _hub_offline_mode, _hub_offline_set, _offline_reason


class ModelError(AccelError):
    """A ``--model`` value that cannot be used; the message says what to do instead.

    ``usage``: True when the value itself is wrong (unknown name, not a pipeline folder: exit status 2), False
    when the model exists in principle but cannot be reached or loaded here (offline, gated, broken download: 1).
    """

    def __init__(self, message: str, usage: bool = False):
        super().__init__(message)
        self.usage = usage


def _spec(family: str):
    from accel.pipelines import supported_specs

    for spec in supported_specs():
        if spec.name == family:
            return spec
    raise KeyError(family)


@dataclass(frozen=True)
class SizeRules:
    """Size rules of an embedded model whose VAE is not its family's (shapes-wan packs pixels, Wan's VAE
    compresses 8x8x4): what ``ModelSpec`` says for a family, for this one model."""

    spatial_multiple: int  # height and width: multiples of this
    frame_multiple: int  # frames: frame_multiple * k + 1
    pixels_per_token: int  # token grid side = pixels // this
    text_pos: str = "none"

    def token_grid(self, frames: int, height: int, width: int):
        from accel.attention_kernels import TokenLayout

        p = self.pixels_per_token
        return TokenLayout((frames - 1) // self.frame_multiple + 1, height // p, width // p)


@dataclass(frozen=True)
class EmbeddedModel:
    """A pipeline that needs no download: trained weights shipped in the package (``load``), or a family's tiny
    test configuration built in-process with random weights (``ModelSpec.tiny_pipeline``). The sizes are the CLI's
    defaults for it (small enough for a CPU run)."""

    name: str
    description: str
    family: str  # the ModelSpec that accelerates it
    config: dict[str, Any]  # keyword arguments of spec.tiny_pipeline (random-weight models)
    height: int
    width: int
    frames: int
    steps: int
    guidance_scale: float
    note: str = ""
    is_video: bool = True
    load: Callable[[Any], Any] | None = None  # dtype -> the pipeline with trained weights
    rules: SizeRules | None = None  # None: the family's size rules
    call_defaults: dict[str, Any] = field(default_factory=dict)  # further pipeline arguments it needs
    describe_more: str = ""  # for `diffusion-fast models`: what it draws, its size, how it was trained
    calibration_prompts: tuple[str, ...] = ()  # `calibrate`'s default prompts (empty: generic scenes)

    @property
    def random_weights(self) -> bool:
        return self.load is None

    @property
    def spec(self):
        return _spec(self.family)

    @property
    def pipeline_class(self) -> str:
        return self.spec.pipeline_classes[0]

    @property
    def transformer_class(self) -> str:
        return self.spec.transformer_classes[0]

    @property
    def fps(self) -> int | None:
        return self.spec.default_fps

    def source(self) -> ModelSource:
        """What ``--model NAME`` resolves to for this model (no weights built)."""
        return ModelSource(self.name, "embedded", self.name, self.pipeline_class, (self.transformer_class,), self)

    def build(self, dtype=None):
        """The pipeline: shipped weights, or random ones (``dtype``: torch dtype, float32 when None)."""
        if self.load is not None:
            import torch

            return self.load(dtype or torch.float32)
        from accel.testing import tiny_pipeline

        kwargs = dict(self.config)
        if dtype is not None:
            kwargs["dtype"] = dtype
        return tiny_pipeline(self.family, **kwargs)

    def skeletons(self) -> dict[str, Any]:
        """Its denoisers on the meta device (configs only, no weights read)."""
        import torch
        from accel.pipelines import denoisers

        if self.load is not None:
            from accel.embedded.model import transformer_skeleton

            return {"transformer": transformer_skeleton()}
        with torch.device("meta"):
            return dict(denoisers(self.build()))


def _load_shapes_wan(dtype):
    from accel.embedded import load_shapes_wan

    return load_shapes_wan(dtype)


DEFAULT_MODEL = "shapes-wan"
RANDOM_MODEL = "tiny-random-wan"
MODEL_ENV = "DIFFUSION_FAST_MODEL"  # overrides --model's default (the test suite sets tiny-random-wan)


def default_model() -> str:
    """``--model``'s default: ``$DIFFUSION_FAST_MODEL`` when set, else the embedded trained model."""
    return os.environ.get(MODEL_ENV) or DEFAULT_MODEL


TINY_RANDOM_WAN_CONFIG: dict[str, Any] = dict(num_layers=2, num_heads=2, head_dim=16, text_dim=32, seed=0)

EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name=DEFAULT_MODEL,
            description=(
                "embedded, no download, trained: a small text-to-video Wan (WanPipeline; WanTransformer3DModel "
                "4 layers, 2x64 heads, 1.1M parameters; UMT5 text encoder over a 28-word grammar; a linear VAE: "
                "8x8-pixel cells of two frames on 12 fitted principal components)"
            ),
            family="wan",
            config={},
            height=128,
            width=128,
            frames=33,
            steps=20,
            guidance_scale=4.0,
            load=_load_shapes_wan,
            rules=SizeRules(spatial_multiple=16, frame_multiple=2, pixels_per_token=8),
            call_defaults={"max_sequence_length": 16},
            note=(
                "shapes-wan follows colours, shapes and backgrounds; it does not yet keep an object's motion from "
                "frame to frame"
            ),
            # From the training combinations, so the held-out evaluation prompts stay unseen.
            calibration_prompts=(
                "a white circle moving left",
                "two red squares moving down",
                "a green triangle bouncing on a gray background",
            ),
            describe_more=(
                "draws one or two red/green/blue/yellow/white/purple circles, squares or triangles on a black/gray/"
                "blue/green/white background; its grammar also names motion (left/right/up/down, bouncing, apart, "
                "together, slowly/quickly), which it does not follow reliably yet: objects jump between cells "
                "(dense, held-out prompts: see README). Trained from scratch with flow matching on procedural clips, "
                "2,000 steps in 40 minutes on 2 CPU cores (python -m accel.embedded.train); 4.6 MB of weights; "
                "frames 2k+1, sides multiples of 16, 8x8 pixels per token: the default 128x128x33 is 17x16x16 = "
                "4,352 video tokens"
            ),
        ),
        EmbeddedModel(
            name=RANDOM_MODEL,
            description=(
                "embedded, no download: a tiny randomly initialised Wan 2.1 pipeline (WanPipeline, 2 layers, "
                "2x16 heads, T5 and VAE from configs)"
            ),
            family="wan",
            config=TINY_RANDOM_WAN_CONFIG,
            height=256,
            width=256,
            frames=33,
            steps=10,
            guidance_scale=5.0,
            note=(
                f"{RANDOM_MODEL} has random weights: it shows the path and the speed, its video is noise. "
                f"For a real video use the default model ({DEFAULT_MODEL}) or a diffusers model, e.g. "
                "--model Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
            ),
            describe_more="random weights, its video is noise (the tests' model)",
        ),
    )
}

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]$")


@dataclass
class ModelSource:
    """What a ``--model`` value points at, known before any weights are loaded."""

    name: str
    kind: str  # "embedded" | "local" | "hub"
    location: str  # embedded name, folder path or repo id
    pipeline_class: str
    transformer_classes: tuple[str, ...] = ()
    embedded: EmbeddedModel | None = None
    index: dict[str, Any] = field(default_factory=dict)
    offline: bool = False  # hub: the Hub is not reachable (or HF_HUB_OFFLINE): only the local cache is used

    @property
    def spec(self):
        """The ModelSpec of the pipeline's transformer (None: accel cannot accelerate it)."""
        from accel.pipelines import supported_specs

        for spec in supported_specs():
            if any(c in spec.transformer_classes for c in self.transformer_classes):
                return spec
            if self.pipeline_class in spec.pipeline_classes and not self.transformer_classes:
                return spec
        return None

    def call_parameters(self) -> dict[str, Any] | None:
        """``__call__`` parameters of the pipeline class -> default (``inspect.Parameter.empty`` if required);
        None when diffusers has no class of that name (a custom pipeline)."""
        import diffusers

        try:
            cls = getattr(diffusers, self.pipeline_class)
        except (AttributeError, ImportError):
            return None
        return {
            name: p.default
            for name, p in inspect.signature(cls.__call__).parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }

    @property
    def size_rules(self):
        """What sizes it takes and their token grid: the embedded model's own rules, else its family's spec."""
        if self.embedded is not None and self.embedded.rules is not None:
            return self.embedded.rules
        return self.spec

    @property
    def is_video(self) -> bool:
        if self.embedded is not None:
            return self.embedded.is_video
        params = self.call_parameters()
        if params is None:
            return "Video" in self.pipeline_class
        return "num_frames" in params

    def describe(self) -> str:
        if self.kind == "embedded":
            return f"{self.name} ({self.pipeline_class}, embedded)"
        where = "local folder" if self.kind == "local" else "Hugging Face Hub"
        return f"{self.location} ({self.pipeline_class}, {where})"

    def transformer_skeletons(self) -> dict[str, Any] | None:
        """The pipeline's transformers (``{"transformer": module, ...}``) built on the meta device from their
        configs: no weights are read or allocated. Their ``config`` equals the loaded models', so
        ``ModelSpec.architecture_key`` gives what a calibration plan is keyed by. None when the configs cannot be
        read here (e.g. a Hub repo whose ``transformer/config.json`` is not cached and the Hub is unreachable)."""
        import torch

        if self.embedded is not None:
            return self.embedded.skeletons()
        import diffusers

        out = {}
        for component, class_name in _index_denoisers(self.index).items():
            cls = getattr(diffusers, class_name, None)
            config = self._component_config(component)
            if cls is None or config is None:
                return None
            try:
                with torch.device("meta"):
                    out[component] = cls.from_config(config)
            except Exception:  # a config this diffusers cannot build: the load will say why
                return None
        return out or None

    def _component_config(self, component: str) -> dict | None:
        if self.kind == "local":
            path = Path(self.location) / component / "config.json"
        else:
            try:
                path = Path(_hub_file(self.location, f"{component}/config.json", self.offline))
            except Exception:  # not cached and unreachable, or missing: checked again when loading
                return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None


def _from_index(name: str, kind: str, location: str, index: dict, offline: bool = False) -> ModelSource:
    pipeline_class = index.get("_class_name")
    if not isinstance(pipeline_class, str):
        raise ModelError(f"{location}: model_index.json has no '_class_name'; is this a diffusers pipeline?")
    transformers = tuple(_index_denoisers(index).values())
    return ModelSource(name, kind, location, pipeline_class, transformers, None, index, offline)


def _index_denoisers(index: dict) -> dict[str, str]:
    """Denoiser component -> class name, as ``model_index.json`` lists them (``[library, class]`` entries)."""
    from accel.pipelines import denoiser_attrs

    out = {}
    for component in denoiser_attrs():
        entry = index.get(component)
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str):
            out[component] = entry[1]
    return out


def _offline_message(repo: str, reason: str) -> str:
    return (
        f"cannot load model {repo!r}: {reason}. To fix: download it once where there is network (`hf download "
        f"{repo}`, or run this command online; it lands in the Hugging Face cache, ~/.cache/huggingface), pass a "
        f"local pipeline folder with --model /path/to/folder, or use the embedded model (--model {default_model()}, "
        "no download)"
    )


def resolve_model(name: str) -> ModelSource:
    """Find what ``name`` is and read its ``model_index.json`` (from the Hub cache, or the Hub when reachable)."""
    if name in EMBEDDED:
        return EMBEDDED[name].source()
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(
                f"--model {name!r} is a file; pass a diffusers pipeline folder (with model_index.json)", usage=True
            )
        index_file = path / "model_index.json"
        if not index_file.is_file():
            raise ModelError(
                f"{name!r} is not a diffusers pipeline folder (no model_index.json); pass the folder that "
                "DiffusionPipeline.save_pretrained or `hf download` wrote",
                usage=True,
            )
        try:
            index = json.loads(index_file.read_text())
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot read {index_file}: {e}") from None
        return _from_index(name, "local", str(path), index)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or not _REPO_ID.match(name):
        hint = difflib.get_close_matches(name, list(EMBEDDED), n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise ModelError(
            f"unknown model {name!r}: not an embedded model ({', '.join(EMBEDDED)}), not an existing folder, and "
            f"not a Hugging Face repo id (owner/name).{did_you_mean} `{PROG} models` lists what is available",
            usage=True,
        )
    offline_reason = _offline_reason()
    index = _hub_model_index(name, offline_reason)
    return _from_index(name, "hub", name, index, offline=offline_reason is not None)


def _hub_model_index(repo: str, offline_reason: str | None) -> dict:
    """model_index.json of a Hub repo: from the local cache, else (when the Hub is reachable) a small download."""
    from huggingface_hub import errors as hf_errors

    try:
        path = _hub_file(repo, "model_index.json", offline=offline_reason is not None)
    except hf_errors.LocalEntryNotFoundError:  # not cached, and offline or the Hub unreachable
        why = offline_reason or "the Hub cannot be reached"
        reason = f"it is not in the local Hugging Face cache and {why}"
        raise ModelError(_offline_message(repo, reason)) from None
    except hf_errors.GatedRepoError:
        raise ModelError(
            f"{repo!r} is gated on the Hugging Face Hub: accept its licence on the model page and log in "
            "(`hf auth login`), or pass a local folder with --model PATH"
        ) from None
    except hf_errors.RepositoryNotFoundError:
        raise ModelError(
            f"unknown model {repo!r}: no such repository on the Hugging Face Hub (or it is private; log in with "
            f"`hf auth login`). `{PROG} models` lists the supported families",
            usage=True,
        ) from None
    except hf_errors.RevisionNotFoundError as e:
        raise ModelError(f"{repo!r}: {e}") from None
    except hf_errors.EntryNotFoundError:
        raise ModelError(
            f"{repo!r} has no model_index.json: it is not a diffusers pipeline repository (look for a "
            "'-Diffusers' variant of the checkpoint)",
            usage=True,
        ) from None
    except (hf_errors.HfHubHTTPError, OSError) as e:
        raise ModelError(_offline_message(repo, f"the Hub request failed ({type(e).__name__}: {e})")) from None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read model_index.json of {repo!r}: {e}") from None


def load_pipeline(source: ModelSource, dtype):
    """Build the embedded pipeline or load a diffusers one (on the CPU; the caller moves or offloads it)."""
    import torch

    if source.embedded is not None:
        return source.embedded.build(dtype)
    from diffusers import DiffusionPipeline
    from huggingface_hub import errors as hf_errors

    load_dtype: Any = dtype
    spec = source.spec
    if spec is not None and spec.float32_components and dtype != torch.float32:
        load_dtype = {"default": dtype, **dict.fromkeys(spec.float32_components, torch.float32)}
    kwargs: dict[str, Any] = {"dtype": load_dtype}  # (diffusers 0.42 deprecates torch_dtype)
    offline = source.kind == "hub" and (source.offline or _hub_offline_set())
    if offline:
        kwargs["local_files_only"] = True
    try:
        with _hub_offline_mode(offline):
            return DiffusionPipeline.from_pretrained(source.location, **kwargs)
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled) as e:
        raise ModelError(_offline_message(source.location, f"its weights are not all in the local cache ({e})")) from e
    except hf_errors.GatedRepoError:
        raise ModelError(
            f"{source.location!r} is gated: accept its licence on the Hub and log in (`hf auth login`)"
        ) from None
    except (hf_errors.HfHubHTTPError, OSError) as e:
        if source.kind == "local":
            raise ModelError(f"cannot load the pipeline folder {source.location!r}: {e}") from e
        raise ModelError(_offline_message(source.location, f"loading failed ({type(e).__name__}: {e})")) from e
