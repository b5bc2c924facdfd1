"""Progress for long loops: a tqdm bar on a terminal, plain periodic lines anywhere else.

A tqdm bar redraws itself with carriage returns; written into a log file or a CI console that
is one ever-growing line of `\\r`-separated bars. When the stream is not a terminal,
`progress_bar` returns a `LineProgress` instead, which prints one ordinary line every
`interval` seconds (and one at the end):

    train: 400/1000 (40%), 2.1 it/s, elapsed 3m10s, eta 4m45s, loss 0.812 mask 0.301 lr 0.04

Both have the calls the loops use: update(n), set_postfix_str(text), set_postfix(k=v), write(text),
close().
"""
from __future__ import annotations

import sys
import time
from typing import IO

__all__ = ["LineProgress", "format_duration", "progress_bar"]


def format_duration(seconds: float) -> str:
    """12 -> '12s', 190 -> '3m10s', 7300 -> '2h01m'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class LineProgress:
    """tqdm's interface, printing a plain line at most every `interval` seconds."""

    def __init__(self, total: int | None, desc: str, *, initial: int = 0, unit: str = "it",
                 file: IO[str] | None = None, interval: float = 30.0, clock=time.monotonic):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._start_n = initial
        self.file = file
        self.interval = interval
        self._clock = clock
        self._start = self._last = clock()
        self._postfix = ""
        self._printed_n: int | None = None

    def _stream(self) -> IO[str]:
        return self.file if self.file is not None else sys.stderr

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self._print(now)

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self._postfix = text

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def write(self, text: str, file: IO[str] | None = None) -> None:
        print(text, file=file if file is not None else sys.stdout, flush=True)

    def close(self) -> None:
        if self._printed_n != self.n and self.n != self._start_n:
            self._print(self._clock())

    def line(self, now: float | None = None) -> str:
        now = self._clock() if now is None else now
        elapsed = now - self._start
        done = self.n - self._start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.n}/{self.total}" if self.total else f"{self.desc}: {self.n}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.2f} {self.unit}/s" if rate < 10 else f"{rate:.0f} {self.unit}/s")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"eta {format_duration((self.total - self.n) / rate)}")
        if self._postfix:
            parts.append(self._postfix)
        return ", ".join(parts)

    def _print(self, now: float) -> None:
        self._printed_n = self.n
        print(self.line(now), file=self._stream(), flush=True)


class _Silent:
    """The same interface, printing nothing except `write`."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        pass

    def set_postfix(self, refresh: bool = True, **values) -> None:
        pass

    def write(self, text: str, file: IO[str] | None = None) -> None:
        print(text, file=file if file is not None else sys.stdout, flush=True)

    def close(self) -> None:
        pass


def progress_bar(total: int | None, desc: str, *, initial: int = 0, unit: str = "it",
                 enabled: bool = True, file: IO[str] | None = None, interval: float = 30.0, **tqdm_options):
    """A tqdm bar when `file` (default stderr) is a terminal, else a `LineProgress`; nothing
    at all when not `enabled`."""
    if not enabled:
        return _Silent()
    stream = file if file is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit=unit, desc=desc, file=stream, **tqdm_options)
    return LineProgress(total, desc, initial=initial, unit=unit, file=file, interval=interval)
