"""Progress that stays live on a terminal and does not flood a log file.

On a terminal this is tqdm. When the output is not a terminal (``python -m hapvr.train > log``,
CI, a batch job), tqdm would rewrite its line with ``\\r`` on every update and a log file would
hold thousands of them; there :class:`LineProgress` prints one plain line every ``interval``
seconds (default 10, or ``HAPVR_PROGRESS_INTERVAL``) and one at the end. Both take the same calls:
``update(n)``, ``set_postfix(**values)``, ``close()``, iteration, and ``with``.
"""

from __future__ import annotations

import os
import sys
import time

INTERVAL_ENV = "HAPVR_PROGRESS_INTERVAL"


def _interval() -> float:
    try:
        return max(float(os.environ.get(INTERVAL_ENV, "10")), 0.0)
    except ValueError:
        return 10.0


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60:02d}:{seconds % 60:02d}"


class LineProgress:
    """tqdm's interface, printing ``desc: n/total (pct) [elapsed<eta, rate unit/s] postfix`` as a
    new line at most every ``interval`` seconds."""

    def __init__(self, iterable=None, total=None, desc: str = "", unit: str = "it", initial: int = 0,
                 disable: bool = False, file=None, interval: float | None = None, **_ignored):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable) + initial
        self.total, self.desc, self.unit, self.n, self.initial = total, desc, unit, initial, initial
        self.disable, self.file = disable, file or sys.stderr
        self.interval = _interval() if interval is None else interval
        self.start = self.last = time.monotonic()
        self.postfix = ""
        self.closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_description(self, desc: str, refresh: bool = False) -> None:
        self.desc = desc

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._print(now)

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = now - self.start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            pct = 100.0 * self.n / self.total
            eta = f"<{_fmt_time((self.total - self.n) / rate)}" if rate > 0 and self.n < self.total else ""
            count = f"{self.n}/{self.total} ({pct:.0f}%)"
        else:
            eta, count = "", f"{self.n}"
        tail = f" {self.postfix}" if self.postfix else ""
        return f"{head}{count} [{_fmt_time(elapsed)}{eta}, {rate:.3g} {self.unit}/s]{tail}"

    def _print(self, now: float | None = None) -> None:
        if not self.disable:
            print(self.line(now), file=self.file, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._print()


def note(msg: str) -> None:
    """One line for the user on stderr, apart from a command's results on stdout."""
    print(msg, file=sys.stderr, flush=True)


def progress(iterable=None, **kwargs):
    """tqdm on a terminal, :class:`LineProgress` otherwise (same arguments as tqdm)."""
    stream = kwargs.get("file") or sys.stderr
    isatty = getattr(stream, "isatty", lambda: False)
    if isatty():
        from tqdm import tqdm

        kwargs.setdefault("dynamic_ncols", True)
        kwargs.setdefault("mininterval", 0.5)
        return tqdm(iterable, **kwargs)
    return LineProgress(iterable, **kwargs)
