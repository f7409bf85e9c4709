"""Models the ``diffusion-fast`` CLI can render with: the embedded offline model(s) and diffusers pipelines.

``resolve_model(name)`` finds out what a ``--model`` value is (embedded name, local pipeline folder or Hugging Face
Hub repo id) and reads the pipeline's ``model_index.json`` without loading any weights, so the CLI can check the
request (preset support, size rules, output format) first. ``load_pipeline(source, ...)`` then builds or loads it.
Errors are :class:`ModelError` with a message that says what to do.
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

import torch


class ModelError(Exception):
    """A ``--model`` value that cannot be used; the message says what to do instead.

    ``usage``: True when the value itself is wrong (unknown name, not a pipeline folder), False when the model
    exists in principle but cannot be reached or loaded here (offline, gated, broken download).
    """

    def __init__(self, message: str, usage: bool = False):
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class EmbeddedModel:
    """A pipeline built in-process from a config: no download, works offline."""

    name: str
    description: str
    pipeline_class: str
    transformer_class: str
    build: Callable[[torch.dtype], Any]
    # CLI defaults for this model (sizes small enough for a CPU run in seconds).
    height: int
    width: int
    frames: int
    steps: int
    guidance_scale: float
    fps: int
    note: str = ""
    is_video: bool = True


TINY_RANDOM_WAN_CONFIG = dict(num_layers=2, num_heads=2, head_dim=16, text_dim=32, seed=0)


def _build_tiny_random_wan(dtype: torch.dtype):
    from accel.testing import tiny_wan_pipeline

    return tiny_wan_pipeline(**TINY_RANDOM_WAN_CONFIG, dtype=dtype)


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="tiny-random-wan",
            description=(
                "embedded, no download: a tiny randomly initialised Wan 2.1 pipeline (WanPipeline, 2 layers, "
                "2x16 heads, T5 and VAE from configs)"
            ),
            pipeline_class="WanPipeline",
            transformer_class="WanTransformer3DModel",
            build=_build_tiny_random_wan,
            height=256,
            width=256,
            frames=33,
            steps=10,
            guidance_scale=5.0,
            fps=16,
            note=(
                "tiny-random-wan has random weights: it shows the path and the speed, its video is noise. "
                "For real videos pass a diffusers model, e.g. --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
            ),
        ),
    )
}
DEFAULT_MODEL = "tiny-random-wan"

# Hub checkpoints known to load as the supported families (for `diffusion-fast models` and messages).
EXAMPLE_REPOS: dict[str, tuple[str, ...]] = {
    "wan": (
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        "Wan-AI/Wan2.1-T2V-14B-Diffusers",
        "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
    ),
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


def _from_index(name: str, kind: str, location: str, index: dict) -> ModelSource:
    pipeline_class = index.get("_class_name")
    if not isinstance(pipeline_class, str):
        raise ModelError(f"{location}: model_index.json has no '_class_name'; is this a diffusers pipeline?")
    transformers = []
    for component in ("transformer", "transformer_2"):
        entry = index.get(component)
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str):
            transformers.append(entry[1])
    return ModelSource(name, kind, location, pipeline_class, tuple(transformers), None, index)


def _offline_message(repo: str, reason: str) -> str:
    return (
        f"cannot load model {repo!r}: {reason}. To fix: download it once where there is network (`hf download "
        f"{repo}`, or run this command online; it lands in the Hugging Face cache, ~/.cache/huggingface), pass a "
        f"local pipeline folder with --model /path/to/folder, or use the embedded model (--model {DEFAULT_MODEL}, "
        "no download)"
    )


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_model(name: str) -> ModelSource:
    """Find what ``name`` is and read its ``model_index.json`` (from the Hub cache or the Hub for repo ids)."""
    if name in EMBEDDED:
        m = EMBEDDED[name]
        return ModelSource(name, "embedded", name, m.pipeline_class, (m.transformer_class,), m)
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
            f"not a Hugging Face repo id (owner/name).{did_you_mean} `diffusion-fast models` lists what is available",
            usage=True,
        )
    return _from_index(name, "hub", name, _hub_model_index(name))


def _hub_model_index(repo: str) -> dict:
    """model_index.json of a Hub repo: from the local cache, else (when online) a small download."""
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo, "model_index.json")
    except hf_errors.LocalEntryNotFoundError:  # not cached, and offline or the Hub unreachable
        reason = (
            "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
            if _hub_offline()
            else "it is not in the local Hugging Face cache and the Hub cannot be reached"
        )
        raise ModelError(_offline_message(repo, reason)) from None
    except hf_errors.GatedRepoError:
        raise ModelError(
            f"{repo!r} is gated on the Hugging Face Hub: accept its licence on the model page and log in "
            "(`hf auth login`), or pass a local folder with --model PATH"
        ) from None
    except hf_errors.RepositoryNotFoundError:
        raise ModelError(
            f"unknown model {repo!r}: no such repository on the Hugging Face Hub (or it is private; log in with "
            "`hf auth login`). `diffusion-fast models` lists the supported families",
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


def load_pipeline(source: ModelSource, dtype: torch.dtype):
    """Build the embedded pipeline or load a diffusers one (on the CPU; the caller moves or offloads it)."""
    if source.embedded is not None:
        return source.embedded.build(dtype)
    from diffusers import DiffusionPipeline
    from huggingface_hub import errors as hf_errors

    load_dtype: Any = dtype
    spec = source.spec
    if spec is not None and spec.name == "wan" and dtype != torch.float32:
        # diffusers' Wan docs keep the VAE in float32 (AutoencoderKLWan in half precision degrades the video).
        load_dtype = {"default": dtype, "vae": torch.float32}
    kwargs: dict[str, Any] = {"dtype": load_dtype}  # (diffusers 0.42 deprecates torch_dtype)
    if source.kind == "hub" and _hub_offline():
        kwargs["local_files_only"] = True
    try:
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


def models_lines() -> list[str]:
    """One line per model for ``diffusion-fast models``: embedded models, then supported families."""
    from accel.pipelines import supported_specs

    lines = []
    for m in EMBEDDED.values():
        lines.append(
            f"{m.name}: {m.description}; defaults {m.height}x{m.width}, {m.frames} frames, {m.steps} steps, "
            f"{m.fps} fps; random weights, its video is noise"
        )
    for spec in supported_specs():
        rules = []
        if spec.spatial_multiple > 1:
            rules.append(f"height/width multiples of {spec.spatial_multiple}")
        if spec.frame_multiple > 1:
            rules.append(f"frames {spec.frame_multiple}k+1")
        if spec.default_fps:
            rules.append(f"{spec.default_fps} fps")
        examples = EXAMPLE_REPOS.get(spec.name, ())
        lines.append(
            f"{spec.name}: {', '.join(spec.pipeline_classes)} (transformer {', '.join(spec.transformer_classes)})"
            + (f"; {', '.join(rules)}" if rules else "")
            + (f"; e.g. --model {', '.join(examples)}" if examples else "")
        )
    return lines
