"""Keeping Ctrl+C's "^C" out of a reply printed in the terminal.

Between prompts the terminal is in its usual (cooked) mode, which echoes a control key as a caret pair: Ctrl+C
pressed to stop a streaming reply writes "^C" wherever the cursor is, in the middle of the reply's text. (Rich's
live line usually paints over it; a dumb terminal, or a reply piped elsewhere, keeps it.) While a reply streams the
REPL turns ECHOCTL off: Ctrl+C still interrupts (ISIG is left alone) and is echoed as the raw control byte, which
terminals do not show.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

try:
    import termios
except ImportError:  # Windows: no termios, and its console does not echo Ctrl+C as ^C
    termios = None  # type: ignore[assignment]

LFLAG = 3  # index of the local modes (ECHO, ECHOCTL, ISIG, ...) in termios.tcgetattr's list


def terminal_fd(stream: IO[str]) -> int | None:
    """The file descriptor of ``stream`` when it is a terminal whose settings can be changed, else None."""
    if termios is None:
        return None
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # StringIO, pytest's captured stdin, a closed file
        return None
    return fd if os.isatty(fd) else None


@contextmanager
def control_keys_unechoed(stream: IO[str]) -> Iterator[None]:
    """While inside, the terminal on ``stream`` does not echo control keys as ``^C``; its settings come back after
    (also on an exception). Does nothing when ``stream`` is not a terminal."""
    fd = terminal_fd(stream)
    if fd is None:
        yield
        return
    saved = termios.tcgetattr(fd)
    quiet = list(saved)
    quiet[LFLAG] = saved[LFLAG] & ~termios.ECHOCTL
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
