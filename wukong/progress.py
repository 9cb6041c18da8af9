"""A text progress bar for jobs that run longer than about a second."""

from __future__ import annotations

import sys
import time
from typing import TextIO

SHOW_AFTER = 1.0  # seconds
REDRAW_EVERY = 0.2  # seconds


class ProgressBar:
    def __init__(self, total: int, width: int = 40, stream: TextIO | None = None):
        self.total = total
        self.width = width
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.monotonic()
        self.shown = False
        self.drawn_at = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        elapsed = now - self.start
        if elapsed < SHOW_AFTER or (now - self.drawn_at < REDRAW_EVERY and not force):
            return
        self.shown = True
        self.drawn_at = now
        frac = min(done / self.total, 1.0) if self.total else 1.0
        bar = "#" * int(frac * self.width)
        self.stream.write(f"\r[{bar:<{self.width}}] {done}/{self.total} tasks | {elapsed:5.1f}s")
        self.stream.flush()

    def finish(self, done: int) -> None:
        if self.shown:
            self.update(done, force=True)
            self.stream.write("\n")
            self.stream.flush()
