"""Model adapters: one ModelSpec record per supported transformer class."""

from . import wan  # noqa: F401  (registers the Wan spec)
from .spec import ModelSpec, register_spec, spec_for_transformer, supported_models_text, supported_specs

__all__ = ["ModelSpec", "register_spec", "spec_for_transformer", "supported_models_text", "supported_specs"]
