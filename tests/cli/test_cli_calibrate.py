"""`diffusion-fast calibrate` writes the Sparse-vDiT plan that `--preset sparse-vdit` then finds by itself."""

from __future__ import annotations

import json

from accel.cli import main

# 3 latent frames of 4x8 tokens = 96 tokens: six 16-token blocks.
SIZE = ["--height", "64", "--width", "128", "--frames", "9", "--steps", "3"]
SMALL = ["--set", "block_size=16"]


def test_calibrate_then_render_with_the_plan(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCEL_PLAN_DIR", str(tmp_path / "plans"))
    monkeypatch.chdir(tmp_path)
    assert main(["calibrate", "w3 w4", "w5", *SIZE, *SMALL, "--tolerance", "0.5", "-q"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("saved ") and "head patterns:" in out and "model tiny-random-wan" in out
    (plan_file,) = (tmp_path / "plans").iterdir()
    plan = json.loads(plan_file.read_text())
    assert plan["format"] == "diffusion-fast/sparse-vdit-plan" and plan["num_steps"] == 3
    assert plan["meta"]["prompts"] == ["w3 w4", "w5"] and plan["meta"]["tolerance"] == 0.5

    # The tiny grid never pays on CPU (min_speedup keeps it dense): this checks that the plan's sparse path runs.
    assert main(["w3", "--preset", "sparse-vdit", *SIZE, *SMALL, "--set", "min_speedup=0", "-o", "a.gif", "-q"]) == 0
    line = capsys.readouterr().out
    assert "preset sparse-vdit" in line and (tmp_path / "a.gif").is_file()
    assert " sparse," in line and not line.count("| 0 sparse,")

    # Another step count has no plan: a clear error, no traceback, no output file.
    assert main(["w3", "--preset", "sparse-vdit", *SIZE[:-1], "4", *SMALL, "-o", "b.gif", "-q"]) == 1
    err = capsys.readouterr().err
    assert "no Sparse-vDiT plan" in err and "diffusion-fast calibrate" in err and "4 steps" in err
    assert not (tmp_path / "b.gif").exists()


def test_calibrate_explicit_output_and_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["calibrate", *SIZE, *SMALL, "-o", "p.json", "--tolerance", "0.2", "-q"]) == 0
    assert json.loads((tmp_path / "p.json").read_text())["meta"]["prompts"][0] == "a red fox running through snow"
    capsys.readouterr()
    assert main(["calibrate", "--set", "plan=x.json", "-q"]) == 2
    assert "-o/--output" in capsys.readouterr().err
    # Too few tokens for the preset's minimum block count: nothing to calibrate, said plainly.
    assert main(["calibrate", "--height", "64", "--width", "64", "--frames", "9", "--steps", "3", "-q"]) == 1
    assert "no sparse attention call" in capsys.readouterr().err
