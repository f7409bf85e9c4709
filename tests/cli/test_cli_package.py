"""The command line as a package: its layout, no import cycles, packaging metadata, and the benchmark that shares
its harness."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "accel" / "cli"
MODULES = (
    "parser",
    "request",
    "runner",
    "render",
    "bench",
    "calibrate",
    "efficiency",
    "output",
    "plot",
    "models",
    "errors",
    "presets",
    "sizes",
    "plan_check",
    "hub",
    "lists",
    "compare",
)


def test_package_layout():
    assert sorted(p.stem for p in CLI.glob("*.py")) == sorted([*MODULES, "__init__", "__main__"])
    for old in ("accel.cli_bench", "accel.cli_output", "accel.cli_plot", "accel.models"):
        assert importlib.util.find_spec(old) is None, old
    assert not (ROOT / "accel" / "cli.py").exists()
    from accel.cli import main

    assert callable(main)


def _cli_imports(path: Path) -> set[str]:
    """accel.cli modules that ``path`` imports, anywhere in the file (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = node.module or ""
                found |= {base.split(".")[0]} if base else {a.name for a in node.names}
            elif node.module and node.module.startswith("accel.cli"):
                rest = node.module.removeprefix("accel.cli").lstrip(".")
                found |= {rest.split(".")[0]} if rest else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("accel.cli."):
                    found.add(alias.name.split(".")[2])
    return found


def test_no_import_cycles():
    graph = {m: _cli_imports(CLI / f"{m}.py") - {m} for m in MODULES}
    for module, imports in graph.items():
        assert "__init__" not in imports and "" not in imports, f"{module} imports the package itself"
        assert imports <= set(MODULES), (module, imports)
    order: list[str] = []
    while len(order) < len(graph):  # a topological order exists exactly when there is no cycle
        ready = sorted(m for m, deps in graph.items() if m not in order and deps <= set(order))
        assert ready, f"import cycle among {sorted(set(graph) - set(order))}: {graph}"
        order += ready
    assert order.index("errors") < order.index("models") < order.index("request") < order.index("runner")


def test_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"  # an SPDX expression, not the deprecated table
    assert any(r.replace(" ", "") == "setuptools>=77" for r in project["build-system"]["requires"])
    assert "accel.cli" in project["tool"]["setuptools"]["packages"]
    assert project["project"]["scripts"]["diffusion-fast"] == "accel.cli:main"


def test_gpu_session_script_is_valid_bash():
    import shutil
    import subprocess

    if shutil.which("bash") is None:
        pytest.skip("no bash")
    script = ROOT / "benchmarks" / "gpu_session.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert "python -m benchmarks.bench_wan_step" in script.read_text()  # the full-size Wan step timing


def test_bench_pipeline_runs_on_the_cli_harness(tmp_path, monkeypatch, capsys):
    """benchmarks/bench_pipeline.py keeps its flags and result files, and its numbers come from the CLI runner."""
    import benchmarks.common as common
    from accel.cli import compare, runner
    from benchmarks import bench_pipeline

    assert bench_pipeline.compare is compare.compare and bench_pipeline.load is runner.load
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    flags = "--device cpu --presets radial --frames 9 --height 64 --width 128 --steps 2 --layers 2 --heads 2"
    flags += " --head-dim 16 --repeats 1 --tag test"
    monkeypatch.setattr(sys, "argv", ["bench_pipeline", *flags.split()])
    bench_pipeline.main()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline_cpu_test.json", "pipeline_cpu_test.md"]
    data = json.loads((tmp_path / "pipeline_cpu_test.json").read_text())
    assert data["config"]["tokens"] == 3 * 4 * 8 and data["config"]["steps"] == 2
    dense, radial = data["rows"]
    assert (dense["preset"], dense["speedup"], dense["psnr_db"], dense["rel_l2"]) == ("dense", 1.0, None, 0.0)
    assert radial["preset"] == "radial" and radial["time_s"] > 0
    assert radial["attention_calls"]["dense"] == 2 * 2 * 2  # steps x CFG branches x layers: all dense at 96 tokens
    assert radial["config"]["attention"]["method"] == "radial"
    md = (tmp_path / "pipeline_cpu_test.md").read_text()
    assert "| dense |" in md and "| radial |" in md
