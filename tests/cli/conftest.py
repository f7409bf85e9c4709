"""Helpers for driving the installed ``diffusion-fast`` console script in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXE = Path(sys.executable).parent / "diffusion-fast"
# Tiny sizes for the embedded model: 64x64 px, 9 frames (3 latent frames), 2 steps.
TINY = ["--height", "64", "--width", "64", "--frames", "9", "--steps", "2"]


# These tests run the random-weight embedded model by default (fast at any size); the trained default model,
# shapes-wan, has its own tests (tests/embedded, tests/cli/test_cli_embedded.py), which unset this.
DEFAULT_MODEL_ENV = {"DIFFUSION_FAST_MODEL": "tiny-random-wan"}


@pytest.fixture(autouse=True)
def random_default_model(monkeypatch):
    """In-process ``main()`` calls see the same default model as the subprocesses."""
    for k, v in DEFAULT_MODEL_ENV.items():
        monkeypatch.setenv(k, v)


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"  # nothing here may reach the network
    env.update(DEFAULT_MODEL_ENV)
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run(
        [str(EXE), *args], cwd=cwd, env=env or cli_env(), capture_output=True, text=True, timeout=timeout
    )


def listing(folder: Path) -> list[str]:
    """Every file and folder under ``folder`` (hidden ones included), relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="session", autouse=True)
def console_script():
    if not EXE.exists():
        pytest.fail(f"{EXE} is missing: install the package (pip install -e .) so the console script exists")
    return EXE
