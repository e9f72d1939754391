"""The progress bar of long farm commands: items/s and ETA on stderr, silent when disabled."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ProgressBar:
    """Rich progress on stderr (results stay alone on stdout); a no-op when ``enabled`` is False.

    Args:
        total: samples the store holds.
        done: samples already complete when the run starts (a resumed store).
        enabled: draw the bar (False for `--quiet` and library calls).
        label: the command it counts for (``simulate``, ``infer``, ``fingerprint``).
        unit: what one count is, for the rate (``traces``, ``obs``, ``chips``).
    """

    total: int
    done: int
    enabled: bool
    label: str = "simulate"
    unit: str = "traces"
    _bar: Any = field(default=None, init=False)
    _task: Any = field(default=None, init=False)
    _t0: float = field(default=0.0, init=False)
    _done0: int = field(default=0, init=False)

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn(f"[bold]{self.label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(
                self.label, total=self.total, completed=self.done, rate=""
            )
            self._t0 = time.perf_counter()
            self._done0 = self.done
        return self

    def advance(self, n: int) -> None:
        """Count ``n`` more finished items."""
        self.done += n
        if self._bar is not None:
            rate = (self.done - self._done0) / max(time.perf_counter() - self._t0, 1e-9)
            self._bar.update(self._task, completed=self.done, rate=f"{rate:,.0f} {self.unit}/s")

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
