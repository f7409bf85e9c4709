"""Presets and ``--set KEY=VALUE``: names checked with a did-you-mean, values converted to the config fields' types."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from .errors import PROG, CLIError


def check_preset_name(preset: str) -> None:
    """Raise CLIError unless every '+' part of ``preset`` is a preset; the message lists them."""
    import accel

    names = list(accel.list_presets())
    for part in (p.strip() for p in preset.split("+")):
        if part in names:
            continue
        close = difflib.get_close_matches(part, names, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise CLIError(
            f"unknown preset {part!r}{hint}; available presets: {', '.join(names)} (combine an attention method and "
            f"a cache with '+', e.g. radial+taylorseer; `{PROG} presets` describes them)"
        )


def _resolve(preset: str, overrides: dict[str, Any]):
    from accel.config import resolve_config

    return resolve_config(preset, dict(overrides))


def _parts(config) -> list[Any]:
    return [p for p in (config.attention, config.cache) if p is not None]


def field_types(config) -> dict[str, Any]:
    """Parameter name -> type annotation over the config's parts (attention method and cache)."""
    out: dict[str, Any] = {}
    for part in _parts(config):
        hints = typing.get_type_hints(type(part))
        for f in dataclasses.fields(part):
            out.setdefault(f.name, hints.get(f.name, Any))
    return out


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _convert(text: str, hint) -> Any:
    """``text`` as a value of type ``hint``; ValueError(what was expected) otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        nullable = len(options) < len(args)
        if nullable and text.lower() in ("none", "null"):
            return None
        wanted = []
        for option in options:
            try:
                return _convert(text, option)
            except ValueError as e:
                wanted.append(str(e))
        what = " or ".join(wanted)
        raise ValueError(f"{what} (or none: the model's default)" if nullable else what)
    text = _unquote(text.strip())
    if hint is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError("true or false")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("a whole number") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("a number") from None
    if hint is str:
        return text
    if origin is tuple:
        items = [t for t in text.strip("()[] ").replace("x", ",").split(",") if t.strip()]
        variadic = len(args) == 2 and args[1] is Ellipsis
        kinds = [args[0]] * len(items) if variadic else list(args)
        count = "" if variadic else {2: "two ", 3: "three "}.get(len(args), f"{len(args)} ")
        what = f"{count}whole numbers separated by commas, e.g. {'0,1' if variadic else '8,16'}"
        if not items or len(items) != len(kinds) or not all(k is int for k in kinds):
            raise ValueError(what)
        try:
            return tuple(int(t) for t in items)
        except ValueError:
            raise ValueError(what) from None
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def convert_overrides(preset: str, config, overrides: dict[str, Any]) -> dict[str, Any]:
    """``--set`` values (text) converted to the types of ``config``'s fields; values that are not text pass as
    they are. Unknown names and unconvertible values are a CLIError naming the flag."""
    types_ = field_types(config)
    out = {}
    for key, value in overrides.items():
        if key not in types_:
            valid = sorted(types_)
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CLIError(
                f"--set {key}={value}: unknown parameter {key!r} for preset {preset!r}{hint}; valid parameters: "
                f"{', '.join(valid) if valid else 'none (the preset has no parameters)'}"
            )
        if not isinstance(value, str):
            out[key] = value
            continue
        try:
            out[key] = _convert(value, types_[key])
        except ValueError as e:
            raise CLIError(f"--set {key}={value}: {key} must be {e}") from None
    return out


def check_preset(preset: str, overrides: dict[str, Any]):
    """Resolve a preset name (with '+' compositions) and its ``--set`` values; returns ``(config, values)`` with
    the values converted to their fields' types, or raises CLIError."""
    check_preset_name(preset)
    try:
        base = _resolve(preset, {})
    except (ValueError, TypeError) as e:  # e.g. two attention methods composed
        raise CLIError(str(e)) from None
    values = convert_overrides(preset, base, overrides)
    try:
        return _resolve(preset, values), values
    except (ValueError, TypeError) as e:
        culprits = []
        for key in values:
            try:
                _resolve(preset, {key: values[key]})
            except (ValueError, TypeError):
                culprits.append(key)
        shown = " ".join(f"{k}={overrides[k]}" for k in (culprits or values))
        raise CLIError(f"--set {shown}: {e}") from None


def preset_overrides(presets: list[str], overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The --set values for each preset. One preset takes them all (unknown keys are an error); with several
    (bench), each preset takes the keys its configs have, and a key no preset has is an error."""
    if len(presets) == 1 or not overrides:
        return {p: dict(overrides) for p in presets}
    for p in presets:
        check_preset_name(p)
    fields = {p: set(field_types(_resolve(p, {}))) for p in presets}
    unused = [k for k in overrides if not any(k in f for f in fields.values())]
    if unused:
        valid = sorted(set().union(*fields.values()))
        raise CLIError(f"--set {', '.join(unused)}: no preset in {presets} has such a parameter; valid: {valid}")
    return {p: {k: v for k, v in overrides.items() if k in fields[p]} for p in presets}


def is_dense(config) -> bool:
    return config.attention is None and config.cache is None
