"""``diffusion-fast``: render a video or image with an accelerated diffusers pipeline, benchmark presets, calibrate
Sparse-vDiT, list presets and models.

    diffusion-fast "a red circle moving right" -o circle.mp4        # embedded trained model, offline, CPU is fine
    diffusion-fast "a fox" --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --preset radial -o fox.mp4
    diffusion-fast bench --presets radial --json bench.json --plot bench.png
    diffusion-fast calibrate --steps 10 && diffusion-fast "a fox" --preset sparse-vdit --steps 10
    diffusion-fast efficiency --device cuda           # the sparse backends' measured speed on this device
    diffusion-fast presets | models

Modules: ``parser`` (arguments), ``request`` (every check before weights load), ``models`` (what ``--model``
names), ``runner`` (load, apply a preset, timed runs, dense vs presets: the harness of render, bench and the
benchmarks), ``render``, ``bench``, ``calibrate``, ``efficiency`` (the subcommands), ``output`` (file writers),
``plot`` (the bench figure), ``errors`` (messages and exit statuses).

Every cheap check runs before a model is built or loaded. Any :class:`accel.errors.AccelError` becomes one line on
stderr, ``diffusion-fast: error: ...``, and exit status 2 (a bad request) or 1 (a failure); Ctrl-C prints
``interrupted`` and exits with 130, leaving no partial output; a second Ctrl-C exits at once, even inside a long
kernel compile. ``python -m accel.cli`` works too. Nothing here is imported by ``import accel``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from accel.errors import AccelError

from .errors import EXIT_INTERRUPTED, EXIT_USAGE, PROG, exit_code, one_line

__all__ = ["main"]


def _presets(args) -> int:
    import accel

    presets = accel.list_presets()
    width = max(map(len, presets))
    for name, description in presets.items():
        print(f"{name:<{width}}  {description}")
    return 0


def _models(args) -> int:
    from .lists import models_lines

    for line in models_lines():
        print(line)
    return 0


def _command(name: str):
    """The function of a subcommand (imported on use: ``presets`` and ``models`` stay quick)."""
    if name == "render":
        from .render import cmd_render

        return cmd_render
    if name == "bench":
        from .bench import cmd_bench

        return cmd_bench
    if name == "calibrate":
        from .calibrate import cmd_calibrate

        return cmd_calibrate
    if name == "efficiency":
        from .efficiency import cmd_efficiency

        return cmd_efficiency
    return {"presets": _presets, "models": _models}[name]


_EXITING = threading.Lock()


def _hard_exit() -> None:
    """Exit now (second Ctrl-C): remove partial outputs, say so, skip everything else (a compile may be stuck)."""
    from .output import remove_partials

    _EXITING.acquire()  # the signal handler and the watcher thread may both get here: the first one exits
    try:
        remove_partials()
    finally:
        os.write(2, f"\n{PROG}: interrupted\n".encode())
        os._exit(EXIT_INTERRUPTED)


class InterruptGuard:
    """Ctrl-C handling while the command runs (main thread only).

    The first SIGINT raises KeyboardInterrupt, so ``finally`` blocks run, partial outputs are removed and ``main``
    reports it. A second one exits at once: the Python-level handler does, and so does a watcher thread fed by the
    signal wakeup fd, which sees the signal even while the main thread sits in native code that does not return to
    the interpreter (a kernel compile, a C++ compiler subprocess).
    """

    def __init__(self):
        self.hits = 0
        self._installed = False
        self._prev_handler = None
        self._prev_fd = -1
        self._pipe: tuple[int, int] | None = None

    def _on_sigint(self, signum, frame):
        self.hits += 1
        if self.hits == 1:
            raise KeyboardInterrupt
        _hard_exit()

    def _watch(self, fd: int) -> None:
        seen = 0
        try:
            while data := os.read(fd, 64):  # empty: the guard was removed (write end closed)
                seen += data.count(signal.SIGINT)
                if seen >= 2:
                    _hard_exit()
        except OSError:
            pass
        finally:
            os.close(fd)

    def install(self) -> InterruptGuard:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._prev_handler = signal.signal(signal.SIGINT, self._on_sigint)
        self._installed = True
        try:
            r, w = os.pipe()
        except OSError:
            return self
        try:
            os.set_blocking(w, False)
            self._prev_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except (OSError, ValueError, AttributeError):  # no wakeup fd here: the Python-level handler still works
            os.close(r)
            os.close(w)
            return self
        self._pipe = (r, w)
        threading.Thread(target=self._watch, args=(r,), name="diffusion-fast-sigint", daemon=True).start()
        return self

    def remove(self) -> None:
        if not self._installed:
            return
        if self._pipe is not None:
            signal.set_wakeup_fd(self._prev_fd)
            os.close(self._pipe[1])  # the watcher reads EOF, closes its end and ends
            self._pipe = None
        signal.signal(signal.SIGINT, self._prev_handler)
        self._installed = False


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status. ``argv`` None: the process's arguments, and this call is the
    process's entry point (the console script, ``python -m accel.cli``)."""
    entry = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    guard = InterruptGuard().install()
    try:
        return _run(argv)
    except KeyboardInterrupt:
        from .output import remove_partials

        remove_partials()
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        if entry:
            # Nothing is left to clean up; exit now rather than wait on worker threads or pools (kernel compiles).
            sys.stdout.flush()
            os._exit(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    finally:
        if not entry:
            guard.remove()  # in-process callers (tests) get their own SIGINT handling back


def _run(argv: list[str]) -> int:
    from .parser import build_parser, parse_args
    from .runner import quiet_libraries

    parser = build_parser()
    if not argv:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        args = parse_args(argv, parser)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        quiet_libraries(getattr(args, "verbose", False))
        if hasattr(args, "efficiency"):
            from .efficiency import apply_mode

            apply_mode(args, quiet=getattr(args, "quiet", False))
        return _command(args.command)(args)
    except AccelError as e:
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr, flush=True)
        return exit_code(e)
