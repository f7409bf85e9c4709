"""The default model, shapes-wan: `diffusion-fast "a red circle moving right"` renders with it, its size rules, its
calibration prompts, and `bench` reads the prompt back from each preset's frames."""

from __future__ import annotations

import json

import pytest

from .conftest import cli_env, listing
from .conftest import run_cli as run_random


def run_cli(*args, cwd):
    """The console script with its real default model."""
    env = cli_env()
    env.pop("DIFFUSION_FAST_MODEL")
    return run_random(*args, cwd=cwd, env=env)


@pytest.fixture(autouse=True)
def real_default_model(monkeypatch):
    monkeypatch.delenv("DIFFUSION_FAST_MODEL", raising=False)


# 128x128 px (the default), 9 frames: 5 latent frames of 16x16 tokens; 3 steps.
SMALL = ["--frames", "9", "--steps", "3"]


def test_renders_with_the_trained_model_by_default(tmp_path):
    proc = run_cli("a red circle moving right", "-o", "circle.gif", *SMALL, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert listing(tmp_path) == ["circle.gif"]
    assert "shapes-wan" in proc.stderr and "random weights" not in proc.stderr


def test_cli_defaults_are_the_model_s_default_render():
    """The CLI keeps its own literals (reading RENDER would import diffusers, through accel.embedded, whenever the
    CLI starts); they must stay the model's RENDER."""
    from accel.cli.models import DEFAULT_MODEL, EMBEDDED
    from accel.embedded.model import RENDER

    m = EMBEDDED[DEFAULT_MODEL]
    assert (m.height, m.width, m.frames, m.steps, m.guidance_scale) == (
        RENDER["height"], RENDER["width"], RENDER["num_frames"], RENDER["num_inference_steps"], RENDER["guidance_scale"]
    )  # fmt: skip


def test_size_rules_are_the_model_s_own(tmp_path):
    proc = run_cli("a red circle", "--frames", "8", "-o", "x.gif", cwd=tmp_path)
    assert proc.returncode == 2 and "--frames 8 is not 2k+1" in proc.stderr and "use 7 or 9" in proc.stderr
    proc = run_cli("a red circle", "--height", "40", "-o", "x.gif", cwd=tmp_path)
    assert proc.returncode == 2 and "--height 40 is not a multiple of 16" in proc.stderr


def test_bench_reads_the_prompt_back(tmp_path):
    proc = run_cli(
        "bench", "a red circle moving right", "--presets", "taylorseer", *SMALL, "--warmup", "0", "--repeats", "1",
        "--json", "bench.json", "--device", "cpu", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "prompt" in proc.stdout.splitlines()[0] and "read back from the frames" in proc.stdout
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["model"]["name"] == "shapes-wan" and data["model"]["random_weights"] is False
    for row in data["results"]:
        assert set(row["prompt_following"]) == {"colour", "shape", "count", "motion", "background"}


def test_calibrate_defaults_to_the_model_s_calibration_prompts(tmp_path, monkeypatch):
    """In-process, with accel.calibrate replaced by a recorder (the subprocess run would not tell these prompts
    from the generic defaults, which are also three)."""
    import accel
    from accel.cli import main
    from accel.cli.models import DEFAULT_MODEL, EMBEDDED

    seen = []

    def record(pipe, prompts, **kw):
        seen.append(list(prompts))
        raise ValueError("recorded")

    monkeypatch.setattr(accel, "calibrate", record)
    monkeypatch.chdir(tmp_path)
    assert main(["calibrate", *SMALL, "--device", "cpu", "-o", "plan.json", "--quiet"]) != 0
    assert seen == [list(EMBEDDED[DEFAULT_MODEL].calibration_prompts)] and seen[0]
