"""Bad requests exit non-zero with a message that says what to fix, before any model loads, leaving no file behind.

Every case runs in-process through ``accel.cli.main`` (quick); the cases the issue names also run through the
installed console script, concurrently (each a separate process in its own empty folder), and the per-case tests
check the recorded results.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import EXE, TINY, cli_env, listing

# name -> (arguments, setup(folder), expected exit status, phrases the error must contain)
SUBPROCESS_CASES = (
    "unknown_preset",
    "height_not_multiple_of_16",
    "frames_not_4k_plus_1",
    "unknown_extension",
    "output_folder_is_a_file",
    "unknown_model",
    "offline_hub_model",
)
CASES = {
    "unknown_preset": (
        ["a fox", "--preset", "warp", "-o", "out.mp4", *TINY],
        None,
        2,
        ["unknown preset 'warp'", "available presets:", "dense", "radial"],
    ),
    "unknown_preset_in_composition": (
        ["a fox", "--preset", "radial+warp", "-o", "out.mp4", *TINY],
        None,
        2,
        ["unknown preset 'warp'"],
    ),
    "unknown_preset_parameter": (
        ["a fox", "--set", "wobble=3", "-o", "out.mp4", *TINY],
        None,
        2,
        ["unknown parameter", "wobble", "decay"],
    ),
    "height_not_multiple_of_16": (
        ["a fox", "--height", "100", "--width", "64", "--frames", "9", "-o", "out.mp4"],
        None,
        2,
        ["--height 100", "multiple of 16", "96 or 112"],
    ),
    "frames_not_4k_plus_1": (
        ["a fox", "--height", "64", "--width", "64", "--frames", "10", "-o", "out.mp4"],
        None,
        2,
        ["--frames 10", "4k+1", "9 or 13"],
    ),
    "unknown_extension": (
        ["a fox", "-o", "out.avi", *TINY],
        None,
        2,
        ["unknown output extension '.avi'", ".mp4", ".gif", ".png"],
    ),
    "png_for_many_frames": (
        ["a fox", "-o", "out.png", *TINY],
        None,
        2,
        ["9 frames", "--frames 1", "%04d"],
    ),
    "output_folder_missing": (
        ["a fox", "-o", "missing/out.mp4", *TINY],
        None,
        2,
        ["does not exist"],
    ),
    "output_folder_is_a_file": (
        ["a fox", "-o", "blocker/out.mp4", *TINY],
        lambda d: (d / "blocker").write_text("not a folder"),
        2,
        ["is not a folder"],
    ),
    "unknown_model": (
        ["a fox", "--model", "tiny-random-wn", *TINY],
        None,
        2,
        ["unknown model 'tiny-random-wn'", "tiny-random-wan", "diffusion-fast models"],
    ),
    "no_prompt": (["-o", "out.mp4", *TINY], None, 2, ["give a prompt"]),
    "bench_plot_not_png": (
        ["bench", "--plot", "chart.jpg", "--repeats", "1", *TINY],
        None,
        2,
        ["--plot", "must end in .png"],
    ),
    # A hub repo id that is not cached, with the hub offline: what to do instead, no stack trace.
    "offline_hub_model": (
        ["a fox", "--model", "fake-org/not-a-real-model", "-o", "out.mp4", *TINY],
        None,
        1,
        [
            "cannot load model 'fake-org/not-a-real-model'",
            "HF_HUB_OFFLINE",
            "hf download fake-org/not-a-real-model",
            "--model /path/to/folder",
            "--model tiny-random-wan",
        ],
    ),
}


def _run_case(name: str, root: Path):
    args, setup, _, _ = CASES[name]
    folder = root / name
    folder.mkdir()
    if setup is not None:
        setup(folder)
    before = listing(folder)
    # An empty Hugging Face cache: the fake repo can never be found locally.
    env = cli_env(HF_HOME=str(root / "hf-home"))
    proc = subprocess.run([str(EXE), *args], cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    return proc, before, listing(folder)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-errors")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(_run_case, name, root) for name in SUBPROCESS_CASES}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request_in_process(name, tmp_path, monkeypatch, capsys):
    from accel.cli import main

    args, setup, code, phrases = CASES[name]
    if setup is not None:
        setup(tmp_path)
    before = listing(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path.parent / f"{tmp_path.name}-hf-home"))
    if name == "offline_hub_model":
        pytest.importorskip("huggingface_hub")
        import huggingface_hub.constants as hf_constants

        # huggingface_hub reads HF_HUB_OFFLINE and the cache folder at import: set them for this process too.
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path.parent / f"{tmp_path.name}-hf-cache"))
    assert main(list(args)) == code
    err = capsys.readouterr().err
    assert err.startswith("diffusion-fast: error: "), err
    for phrase in phrases:
        assert phrase in err, f"{phrase!r} not in {err!r}"
    assert listing(tmp_path) == before


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_request_exits_with_a_message_and_leaves_nothing(results, name):
    proc, before, after = results[name]
    _, _, code, phrases = CASES[name]
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("diffusion-fast: error: "), proc.stderr
    for phrase in phrases:
        assert phrase in proc.stderr, f"{phrase!r} not in {proc.stderr!r}"
    assert after == before  # no output, no temporary file
    assert proc.stdout == ""


def test_errors_come_before_the_model_is_built(results):
    # The embedded model's note is printed only once a request passed every check.
    for name in SUBPROCESS_CASES:
        proc = results[name][0]
        assert "random weights" not in proc.stderr, name


def test_no_arguments_prints_help(tmp_path):
    proc = subprocess.run([str(EXE)], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "render" in proc.stderr and "bench" in proc.stderr and "presets" in proc.stderr


def test_python_dash_m_runs_the_same_cli(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "accel.cli", "a fox", "--preset", "warp"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown preset 'warp'" in proc.stderr
