"""Progress for long jobs, on a terminal and in log files.

Snakemake writes each job's stderr to a log file, where a tqdm bar shows at most its first
line: a user watching ``tail -f`` saw nothing for minutes. :func:`progress` keeps the tqdm bar
on a tty and otherwise prints a plain line at least every ``interval`` seconds (default 30,
``MVFCNN_PROGRESS_INTERVAL`` overrides) with done/total, rate and ETA, plus a final line::

    fcn32s: 40/400 it (10%), 1.25 s/it, ETA 7m30s, loss=0.4312
    fcn32s: done 400/400 it in 8m20s (1.25 s/it)
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")
DEFAULT_INTERVAL = 30.0


def _interval() -> float:
    try:
        return float(os.environ.get("MVFCNN_PROGRESS_INTERVAL", DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL


def format_seconds(seconds: float) -> str:
    """12s, 7m30s, 1h02m: short enough for a log line."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_rate(count: float, seconds: float, unit: str) -> str:
    """"2.50 it/s" when faster than one per second, else "1.25 s/it"."""
    if count <= 0 or seconds <= 0:
        return f"- {unit}/s"
    rate = count / seconds
    return f"{rate:.2f} {unit}/s" if rate >= 1 else f"{seconds / count:.2f} s/{unit}"


class Progress:
    """A tqdm bar (tty) or periodic log lines (not a tty); use :func:`progress` to make one."""

    def __init__(self, iterable: Iterable[Any] | None, total: int | None, desc: str, *,
                 unit: str = "it", initial: int = 0, stream: IO[str] | None = None,
                 interval: float | None = None, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic, tty: bool | None = None) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.initial = int(initial)
        self.stream = stream if stream is not None else sys.stderr
        self.interval = _interval() if interval is None else float(interval)
        self.enabled, self.clock = enabled, clock
        self.postfix = ""
        self.closed = False
        self._bar: Any = None
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty()) if callable(isatty) else False
        self.tty = tty
        if enabled and tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit,
                             file=self.stream, dynamic_ncols=True, leave=False)
        self.start = self.last = clock()
        if enabled and not tty:
            self._write(f"{desc}: {self._count()} {unit}" + self._suffix())

    # -- state ---------------------------------------------------------------------------
    def _count(self) -> str:
        return f"{self.n}/{self.total}" if self.total is not None else str(self.n)

    def _suffix(self) -> str:
        return f", {self.postfix}" if self.postfix else ""

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def _line(self, now: float) -> str:
        elapsed, done = now - self.start, self.n - self.initial
        parts = [f"{self.desc}: {self._count()} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n // self.total}%)"
        parts.append(format_rate(done, elapsed, self.unit))
        if self.total is not None and done > 0:
            parts.append(f"ETA {format_seconds((self.total - self.n) * elapsed / done)}")
        return ", ".join(parts) + self._suffix()

    # -- API -----------------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        """Count ``n`` more done; print a line if ``interval`` has passed since the last."""
        self.n += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self._write(self._line(now))

    def set_postfix(self, **values: Any) -> None:
        """Extra ``key=value`` fields (e.g. the running loss) for the next line / the bar."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def close(self) -> None:
        """Final line (not a tty) or close the bar; idempotent."""
        if self.closed:
            return
        self.closed = True
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            return
        elapsed = self.clock() - self.start
        rate = format_rate(self.n - self.initial, elapsed, self.unit)
        self._write(f"{self.desc}: done {self._count()} {self.unit} in "
                    f"{format_seconds(elapsed)} ({rate})" + self._suffix())

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("progress(total) is not iterable; call update()")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(iterable_or_total: Iterable[T] | int | None = None, desc: str = "", *,
             total: int | None = None, unit: str = "it", initial: int = 0,
             stream: IO[str] | None = None, interval: float | None = None, enabled: bool = True,
             clock: Callable[[], float] = time.monotonic, tty: bool | None = None) -> Progress:
    """Progress over an iterable (iterate the result) or a count (call ``update``/``close``).

    ``stream`` defaults to stderr; ``tty`` defaults to ``stream.isatty()``; ``enabled=False``
    prints nothing. ``interval``/``clock`` exist for tests.
    """
    if isinstance(iterable_or_total, int):
        iterable, total = None, iterable_or_total if total is None else total
    else:
        iterable = iterable_or_total
    return Progress(iterable, total, desc, unit=unit, initial=initial, stream=stream,
                    interval=interval, enabled=enabled, clock=clock, tty=tty)
