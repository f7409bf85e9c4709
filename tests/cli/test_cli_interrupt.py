"""Ctrl-C: 'interrupted', exit status 130, no traceback, no partial output; a second Ctrl-C exits at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from accel.cli import InterruptGuard, main
from accel.cli import output as cli_output

from .conftest import TINY, cli_env, listing

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# The command runs for real up to the denoising loop, which these scripts replace: {body} is a run_pipeline that
# waits forever, as a long kernel compile would.
SCRIPT = """
import sys, time
import accel.cli.render as render

def long_compile(pipe, request, prompt, **kwargs):
{body}

render.load = lambda request, quiet=False: object()  # the dense preset: nothing is applied to it
render.run_pipeline = long_compile
sys.argv = ["diffusion-fast", "a fox", "--preset", "dense", "-o", "out.mp4", *{tiny!r}]
from accel.cli import main
sys.exit(main())
"""
INTERRUPTIBLE = """
    print("compiling", flush=True)
    while True:
        time.sleep(0.05)
"""
# A compile that catches the first KeyboardInterrupt and carries on (as worker pools and retry loops do). Everything
# from the "compiling" line on sits inside the try: a KeyboardInterrupt raised between two statements (a loaded
# machine can deliver it anywhere) is swallowed too, not only one raised inside sleep().
SWALLOWS_ONE = """
    try:
        print("compiling", flush=True)
        while True:
            time.sleep(0.05)
    except KeyboardInterrupt:
        print("swallowed", flush=True)
    while True:
        time.sleep(0.05)
"""


def _start(tmp_path: Path, body: str) -> subprocess.Popen:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(body=body, tiny=TINY))
    work = tmp_path / "work"
    work.mkdir()
    return subprocess.Popen(
        [sys.executable, str(script)],
        cwd=work,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(proc: subprocess.Popen, line: str, timeout: float = 120) -> None:
    """Read stdout until ``line`` (the process is killed if it never comes)."""
    seen = []
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for got in proc.stdout:
            seen.append(got)
            if got.strip() == line:
                return
    finally:
        timer.cancel()
    pytest.fail(f"never printed {line!r}; stdout {seen}, stderr {proc.stderr.read()}")


def _finish(proc: subprocess.Popen, timeout: float = 30) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("still running after Ctrl-C")
    return err


def test_ctrl_c_exits_130_with_one_line(tmp_path):
    proc = _start(tmp_path, INTERRUPTIBLE)
    _wait_for(proc, "compiling")
    proc.send_signal(signal.SIGINT)
    err = _finish(proc)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.rstrip().endswith("diffusion-fast: interrupted")
    assert listing(tmp_path / "work") == []


def test_second_ctrl_c_exits_at_once(tmp_path):
    proc = _start(tmp_path, SWALLOWS_ONE)
    _wait_for(proc, "compiling")
    proc.send_signal(signal.SIGINT)
    _wait_for(proc, "swallowed")  # the first one did not stop it
    proc.send_signal(signal.SIGINT)
    err = _finish(proc)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert listing(tmp_path / "work") == []


def test_ctrl_c_while_writing_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    """In-process: Ctrl-C in the middle of writing the video (after the render) removes the half-written file."""
    monkeypatch.chdir(tmp_path)

    def interrupted_write(kind, path, frames, fps):
        Path(path).write_bytes(b"half a video")
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_output, "_write_file", interrupted_write)
    handler = signal.getsignal(signal.SIGINT)
    assert main(["a fox", "--preset", "dense", "-o", "out.mp4", "-q", *TINY]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "diffusion-fast: interrupted" and "Traceback" not in err
    assert listing(tmp_path) == []
    assert signal.getsignal(signal.SIGINT) is handler  # an in-process caller gets its handler back


def test_hard_exit_removes_partial_outputs(tmp_path, monkeypatch):
    partial = tmp_path / ".out.1234.partial.mp4"
    partial.write_bytes(b"half")
    staging = tmp_path / ".frames.1234.partial"
    staging.mkdir()
    (staging / "frame_0000.png").write_bytes(b"x")
    monkeypatch.setattr(cli_output, "_PARTIAL", {partial, staging})
    cli_output.remove_partials()
    assert listing(tmp_path) == []


def test_watcher_exits_on_the_second_signal_even_if_the_main_thread_is_stuck(monkeypatch):
    """The wakeup-fd watcher counts SIGINTs by itself, so a main thread stuck in native code cannot delay exit."""
    import accel.cli as cli

    exits = []
    monkeypatch.setattr(cli, "_hard_exit", lambda: exits.append(True))
    r, w = os.pipe()
    guard = InterruptGuard()
    watcher = threading.Thread(target=guard._watch, args=(r,))
    watcher.start()
    os.write(w, bytes([signal.SIGINT]))
    os.write(w, bytes([signal.SIGCHLD]))  # other signals do not count
    os.write(w, bytes([signal.SIGINT]))
    os.close(w)
    watcher.join(timeout=10)
    assert exits and not watcher.is_alive()
