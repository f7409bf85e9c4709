"""Model adapters: one file per model family, each registering its ModelSpec on import.

Every module of this package except ``spec`` and private ``_*`` helpers is a family file and is imported here, so
adding a model means adding one file (and its tests), nothing else.
"""

import importlib
import pkgutil

from .spec import (
    ModelSpec,
    denoiser_attrs,
    denoisers,
    register_spec,
    spec_for_transformer,
    supported_models_text,
    supported_specs,
)

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name != "spec" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "ModelSpec",
    "denoiser_attrs",
    "denoisers",
    "register_spec",
    "spec_for_transformer",
    "supported_models_text",
    "supported_specs",
]
