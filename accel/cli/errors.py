"""How the command line fails: its name in messages, its error class and the exit status of every failure.

Every user-facing failure is an :class:`accel.errors.AccelError`; ``main`` prints it as one line on stderr and exits
with :func:`exit_code`: 2 for a request that is wrong as given (usage), 1 for one that could not be carried out here,
130 after Ctrl-C. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from accel.errors import AccelError, ConfigError, UnsupportedModelError

PROG = "diffusion-fast"
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CLIError(AccelError):
    """A request the CLI refuses or could not carry out; the message says what to do. ``code``: the exit status."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def exit_code(error: AccelError) -> int:
    """The exit status for ``error``: its own ``code`` where it has one, 2 for a bad request, else 1."""
    code = getattr(error, "code", None)
    if isinstance(code, int):
        return code
    usage = getattr(error, "usage", None)
    if isinstance(usage, bool):
        return EXIT_USAGE if usage else EXIT_FAILURE
    if isinstance(error, (ConfigError, UnsupportedModelError)):
        return EXIT_USAGE
    return EXIT_FAILURE


def one_line(error: BaseException) -> str:
    """The error's message on one line (a message that spans lines is joined with '; ')."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return "; ".join(lines) or type(error).__name__
