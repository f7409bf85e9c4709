"""``--compile``: parsed for render and bench, carried by the request, and a render that compiles the embedded
model's transformer (regional compilation) and still makes sparse calls."""

import pytest

from accel.cli.parser import parse_args
from accel.cli.request import resolve_request
from tests.cli.conftest import TINY, run_cli


@pytest.mark.parametrize("command", ["render", "bench"])
def test_flag_parses_and_reaches_the_request(command):
    args = parse_args([command, "a fox", "--compile", "--device", "cpu"])
    assert args.compile
    request, _ = resolve_request(args, ["radial"])
    assert request.compile
    assert not resolve_request(parse_args([command, "a fox", "--device", "cpu"]), ["radial"])[0].compile


def test_render_compiled(tmp_path):
    proc = run_cli("a red fox", "-o", "fox.gif", "--compile", "--device", "cpu", *TINY, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "torch.compile (transformer: regional)" in proc.stderr
    assert "sparse" in proc.stdout + proc.stderr
    assert (tmp_path / "fox.gif").exists()
