"""SIGTERM stops a `farm` command exactly as Ctrl-C does.

Why: systemd, Kubernetes and batch schedulers stop a job with SIGTERM. Python's default for it
is to die on the spot, so no `finally` runs: the private local Ray (raylet, GCS, workers) is
left behind and the user learns nothing. Raising KeyboardInterrupt instead sends SIGTERM down
the one interrupt path every verb already has (the farm flags finished chunks and shuts its
Ray down; training keeps its checkpoints).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

#: What an interrupted verb tells the user, by verb; the rest say only that they stopped.
RESUME_HINTS = {
    "simulate": "completed chunks are kept; re-run the same command to resume",
    "train": "finished checkpoints are kept; re-run the same command to resume",
}


class Interrupts:
    """Remembers which signal stopped the run, for the exit code and the message."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def exit_code(self) -> int:
        """128 + the signal number, the shell's convention: 143 for SIGTERM, 130 for Ctrl-C."""
        return 128 + (self.signum or signal.SIGINT)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The handler for both signals; libraries that take SIGTERM over may call it back."""
        self.signum = signum
        raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[Interrupts]:
    """Within the block, SIGTERM and SIGINT raise KeyboardInterrupt in the main thread.

    The previous handlers come back afterwards. Python runs signal handlers only in the main
    thread, so a call from any other thread (a test driving ``main``) changes nothing.
    """
    seen = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    previous = {sig: signal.signal(sig, seen.handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield seen
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def interrupted_message(argv: list[str]) -> str:
    """One line for a command stopped by Ctrl-C or SIGTERM, saying how to resume if it can."""
    verb = next((a for a in argv if not a.startswith("-")), "")
    hint = RESUME_HINTS.get(verb)
    return f"Interrupted: {hint}." if hint else "Aborted."
