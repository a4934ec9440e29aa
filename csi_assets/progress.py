"""Progress lines for long runs: count, rate and ETA in the run's log, at most every few seconds."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol


class Log(Protocol):
    """What application code logs to: a ``logging.Logger`` or Dagster's ``context.log`` alike."""

    def info(self, msg: str) -> None: ...

    def warning(self, msg: str) -> None: ...


@dataclass
class Progress:
    """Call ``advance(n)`` as work completes; a line is logged when ``every_s`` has passed and at the end."""

    log: Log
    label: str
    total: int
    unit: str = "items"
    every_s: float = 5.0
    done: int = 0
    _start: float = field(default_factory=time.monotonic)
    _last: float = field(default_factory=time.monotonic)

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            self.log.info(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = self.done / elapsed
        remaining = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = f"{remaining:.0f} s" if remaining != float("inf") else "?"
        return f"{self.label}: {self.done}/{self.total} {self.unit} ({rate:.1f}/s, ETA {eta})"

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._start
