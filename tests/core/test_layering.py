"""Every import points down: the package's import graph, read from the source (imports inside functions included).

Levels, top to bottom: the command line (``accel.cli``) uses the public API only; the API (``accel``, ``accel.api``,
``accel.calibration``, ``accel.plans``); the hosts (``accel.hosts``: diffusers, ComfyUI); the attention methods
(``accel.methods``) and the feature cache (``accel.caches``, host-neutral); the core (``config``, ``state``,
``steps``, ``core``, ``errors``, ``ownership``); the kernels (``accel.attention_kernels``: torch and triton only).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# source folder -> installed package (pyproject.toml's package-dir)
FOLDERS = {"accel": "accel", "caches": "accel.caches", "pipelines": "accel.pipelines",
           "attention_kernels": "accel.attention_kernels"}  # fmt: skip

API = ("accel", "accel.api", "accel.calibration", "accel.plans")
CORE = ("accel.config", "accel.state", "accel.steps", "accel.core", "accel.errors", "accel.ownership")
# importer prefix -> what it must not import (prefixes; "accel" alone means the package root, the API)
FORBIDDEN = {
    "accel.attention_kernels": ("accel",),  # anything of ours outside the kernels
    "accel.caches": (*API, "accel.hosts", "accel.methods", "accel.cli", "diffusers"),
    "accel.methods": (*API, "accel.hosts", "accel.caches", "accel.cli"),
    "accel.hosts": (*API, "accel.cli"),
    "accel.cli": ("accel.methods", "accel.hosts", "accel.caches", "accel.core", "accel.steps", "accel.state"),
    **{core: (*API, "accel.hosts", "accel.methods", "accel.caches", "accel.cli") for core in CORE},
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    pkg = FOLDERS[rel.parts[0]]
    parts = list(rel.with_suffix("").parts[1:])
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join([pkg, *parts])


def imports_of(path: Path) -> set[str]:
    """Absolute module names ``path`` imports (``from x import y`` counts as ``x`` and ``x.y``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def graph() -> dict[str, set[str]]:
    files = [p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")]
    return {module_name(p): imports_of(p) for p in files}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(edges: dict[str, set[str]]) -> list[str]:
    """``importer imports target`` for every edge a rule forbids. ``"accel"`` forbids the package root (the API),
    not its subpackages, except for the kernels, which may import nothing of ours but themselves."""
    bad = []
    for importer, targets in edges.items():
        for rule, forbidden in FORBIDDEN.items():
            if not _under(importer, rule):
                continue
            for target, f in ((t, f) for t in targets for f in forbidden):
                if f != "accel":
                    hit = _under(target, f)
                elif rule == "accel.attention_kernels":
                    hit = _under(target, "accel") and not _under(target, rule)
                else:
                    hit = target == "accel"
                if hit:
                    bad.append(f"{importer} imports {target} ({rule} must not import {f})")
    return sorted(set(bad))


def test_every_import_points_down():
    edges = graph()
    assert "accel.caches.adaptive" in edges and "accel.cli.request" in edges  # the walk found the package
    assert violations(edges) == []


@pytest.mark.parametrize(
    "importer, target",
    [
        ("accel.methods.calibration", "accel.api"),  # calibration above the methods
        ("accel.caches.taylorseer", "accel.hosts.diffusers_internals"),  # caches free of diffusers internals
        ("accel.caches.install", "diffusers.hooks"),
        ("accel.cli.request", "accel.methods"),  # the CLI on the public API
        ("accel.cli.request", "accel.methods.base"),
        ("accel.cli.runner", "accel.hosts.diffusers_internals"),
        ("accel.attention_kernels.sdpa_runs", "accel.config"),  # kernels import nothing of ours
        ("accel.core", "accel.methods"),
        ("accel.state", "accel.api"),
    ],
)
def test_the_checker_catches_upward_imports(importer, target):
    assert violations({importer: {target}}), (importer, target)


def test_the_checker_allows_downward_imports():
    ok = {
        "accel.api": {"accel.methods", "accel.hosts.diffusers", "accel.caches"},
        "accel.calibration": {"accel.api", "accel.methods.calibration"},
        "accel.hosts.diffusers_cache": {"accel.caches", "accel.hosts.diffusers_internals", "diffusers.hooks"},
        "accel.methods.radial": {"accel.attention_kernels", "accel.config", "accel.state"},
        "accel.cli.request": {"accel.api", "accel.plans", "accel.pipelines", "accel.config"},
        "accel.attention_kernels.sdpa_runs": {"accel.attention_kernels.masks", "torch"},
    }
    assert violations(ok) == []


def test_no_file_over_about_500_lines():
    long = {}
    for folder in ("accel", "caches", "pipelines"):
        for p in (ROOT / folder).rglob("*.py"):
            n = len(p.read_text().splitlines())
            if n > 520:
                long[str(p.relative_to(ROOT))] = n
    assert long == {}
