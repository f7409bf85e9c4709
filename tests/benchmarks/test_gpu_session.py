"""The one-call GPU session script and its Wan step benchmark keep working without a GPU: ``--dry-run`` runs the
whole script (``python -m benchmarks.bench_wan_step --dry-run`` inside it) on the CPU at tiny sizes."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"
CONFIGS = ["dense", "radial", "draft", "rettention", "taylorseer", "radial+taylorseer", "sparse-vdit"]


def test_script_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.slow
def test_dry_run_writes_the_step_table_outside_results():
    results = ROOT / "benchmarks" / "results"
    before = {p: p.stat().st_mtime_ns for p in results.iterdir()}
    # The same interpreter and console scripts as this test's, whatever PATH says.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    out = proc.stdout
    assert "== wan_step: exit status 0" in out, out + proc.stderr
    outputs = Path(re.search(r"^outputs: (.+)$", out, re.M).group(1))
    assert outputs.resolve() != results.resolve()
    assert {p: p.stat().st_mtime_ns for p in results.iterdir()} == before  # nothing there written or touched

    rows = json.loads((outputs / "wan_step_cpu_dry-run.json").read_text())["rows"]
    assert [r["config"] for r in rows] == CONFIGS
    by = {r["config"]: r for r in rows}
    assert all(r["s_per_step"] > 0 and len(r["step_s"]) == 5 for r in rows)
    assert by["dense"]["speedup"] == 1.0 and "stats" not in by["dense"]
    # The tiny model: 2 layers, 2 branches; 5 timed steps of which TaylorSeer computes 1 (attn1, attn2, ffn each).
    # The dry run forces the sparse paths (min_speedup=0) that a full-size run takes.
    for name in ("radial", "draft", "rettention", "sparse-vdit"):
        stats = by[name]["stats"]
        assert stats.get("sparse", 0) + stats.get("dense", 0) == 2 * 2 * 5, (name, stats)
        assert name == "sparse-vdit" or stats["sparse"] > 0, (name, stats)
    for name in ("taylorseer", "radial+taylorseer"):
        stats = by[name]["stats"]
        assert (stats["cache:computed"], stats["cache:predicted"]) == (2 * 3 * 2, 4 * 2 * 3 * 2), (name, stats)
    assert "calibration_s" in by["sparse-vdit"] and 0 <= by["sparse-vdit"]["mean_kept_fraction"] <= 1

    # The script ends with the tables it made: the step table is printed whole after the steps.
    tail = out[out.index("######## Wan denoising step") :]
    assert all(f"| tiny-wan | 128x256x17 | 640 | {c}" in tail for c in ("dense", "radial+taylorseer"))
    assert "######## Result files written under benchmarks/results (this session)\n(none)" in tail
