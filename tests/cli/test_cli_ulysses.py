"""``--ulysses N``: parsed for render and bench, carried by the request, and refused with the torchrun launch line
outside torchrun or with another process count (before any model loads). The split itself is tested in
tests/integration/test_context_parallel.py; samples/torchrun_ulysses.py and a torchrun launch of the CLI run it."""

import pytest

from accel.cli.errors import CLIError
from accel.cli.parser import parse_args
from accel.cli.request import check_ulysses, resolve_request
from tests.cli.conftest import TINY, cli_env, run_cli


@pytest.mark.parametrize("command", ["render", "bench"])
def test_flag_parses_and_reaches_the_request(command, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = parse_args([command, "a fox", "--ulysses", "2", "--device", "cpu"])
    assert args.ulysses == 2
    request, _ = resolve_request(args, ["radial"])
    assert request.ulysses == 2
    monkeypatch.delenv("WORLD_SIZE")
    assert resolve_request(parse_args([command, "a fox", "--device", "cpu"]), ["radial"])[0].ulysses == 1


def test_outside_torchrun_and_wrong_world_size_are_clear_errors():
    with pytest.raises(CLIError, match=r"torchrun --nproc-per-node 2 -m accel.cli .* --ulysses 2"):
        check_ulysses(2, env={})
    with pytest.raises(CLIError, match=r"needs 2 processes but torchrun started 4"):
        check_ulysses(2, env={"WORLD_SIZE": "4"})
    with pytest.raises(CLIError, match="--cpu-offload"):
        check_ulysses(2, cpu_offload=True, env={"WORLD_SIZE": "2"})
    check_ulysses(2, env={"WORLD_SIZE": "2"})
    check_ulysses(1, env={})


def test_cli_refuses_ulysses_outside_torchrun(tmp_path):
    env = cli_env()
    env.pop("WORLD_SIZE", None)
    proc = run_cli("a fox", "-o", "fox.gif", "--ulysses", "2", "--device", "cpu", *TINY, cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "torchrun --nproc-per-node 2" in proc.stderr and not (tmp_path / "fox.gif").exists()


@pytest.mark.slow
def test_torchrun_render_with_two_ranks(tmp_path):
    """The documented launch, on CPU / gloo: both ranks render, rank 0 alone writes and reports (about 20 s)."""
    import subprocess
    import sys

    env = cli_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "accel.cli", "render",
           "a fox", "-o", "fox.gif", "--ulysses", "2", "--device", "cpu", "--height", "64", "--width", "64",
           "--frames", "17", "--steps", "2", "--set", "min_speedup=0", "--set", "block_size=16",
           "--set", "dense_step_fraction=0"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = [ln for ln in proc.stdout.splitlines() if "saved fox.gif" in ln]
    assert len(saved) == 1, proc.stdout
    assert " 4 sparse, " in saved[0] and " 0 fallback " in saved[0], saved[0]
    assert (tmp_path / "fox.gif").exists()
