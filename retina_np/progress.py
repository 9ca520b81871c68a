"""Progress that reads well on a terminal and in a log file: tqdm's bar where it can redraw
itself (a terminal, a notebook), else a plain line every ``PLAIN_PROGRESS_SECONDS`` (CI,
``nohup``, ``> log``), as detectron2 prints every 20 iterations."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

PLAIN_PROGRESS_SECONDS = 20.0


def stderr_is_terminal() -> bool:
    """Whether a progress bar can redraw itself: a terminal, or a Jupyter notebook's widget."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def progress_bar(total: int, initial: int, enabled: bool, desc: str, unit: str):
    """tqdm's bar on a terminal or in a notebook, else plain lines every few seconds."""
    if enabled and not stderr_is_terminal():
        return PlainProgress(total, initial, desc=desc, unit=unit)
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit=unit)


class PlainProgress:
    """Progress as plain lines on stderr, for logs that a file holds (detectron2 prints every
    20 iterations): the first step, then one line every ``every_s`` seconds, and the last.

    It has the parts of tqdm's interface that ``train`` and ``evaluate`` use: ``total``,
    ``update``, ``set_postfix`` and ``close``.
    """

    def __init__(self, total: int, initial: int = 0, every_s: float = PLAIN_PROGRESS_SECONDS,
                 file=None, desc: str = "train", unit: str = "step"):
        self.total, self.n, self.every_s = total, initial, every_s
        self.desc, self.unit = desc, unit
        self.file = file
        self._first = initial
        self._postfix = ""
        self._start = self._last = time.monotonic()
        self._printed_at = None  # the step of the last line printed

    def set_postfix(self, **values) -> None:
        self._postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.n == self._first + n or now - self._last >= self.every_s:
            self._print(now)

    def close(self) -> None:
        if self._printed_at != self.n and self.n > self._first:
            self._print(time.monotonic())

    def _print(self, now: float) -> None:
        self._last, self._printed_at = now, self.n
        spent = now - self._start
        line = f"{self.desc}: {self.unit} {self.n}/{self.total}"
        if self._postfix:
            line += f"  {self._postfix}"
        line += f"  {spent / 60:.1f} min"
        done = self.n - self._first
        if 0 < done and self.n < self.total:
            line += f", about {(self.total - self.n) * spent / done / 60:.1f} min left"
        print(line, file=self.file or sys.stderr, flush=True)
