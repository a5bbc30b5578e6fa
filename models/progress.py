"""Progress of a training run: a live line on a terminal, periodic lines otherwise, and a
timestamped log file that a background run can be followed with (``tail -f``).

:class:`TrainingProgress` is an ``on_step`` callback for :func:`models.training.train`.
On a terminal (``stream.isatty()``) it rewrites one line (step/total, loss, steps/s,
ETA) at most every ``refresh_s``; otherwise it writes a plain line every ``every`` steps
and at the last one. With ``log_path`` it appends one line per step to that file:
``<UTC time> step <n>/<total> loss <loss> lr <lr> seconds <since start>``, and
:meth:`TrainingProgress.note` appends free text (the run's other messages: phantoms,
resume, validation scores, evaluation).
Rates and ETAs count only the steps this process ran (a resumed run starts afresh).
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TextIO

from .errors import ModelsError
from .training import StepInfo

__all__ = ["ProgressError", "TrainingProgress", "format_duration"]


class ProgressError(ModelsError, ValueError):
    """The progress log cannot be written, or a bad setting."""


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``--:--:--`` when unknown)."""
    if not (seconds >= 0 and seconds < 1e9):
        return "--:--:--"
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TrainingProgress:
    """An ``on_step`` callback that shows and logs progress (see the module docstring).
    Use it as a context manager (or call :meth:`close`) so the log file is closed and
    the terminal line ends."""

    def __init__(
        self,
        *,
        prefix: str = "",
        stream: TextIO | None = None,
        log_path: Path | None = None,
        every: int = 25,
        refresh_s: float = 0.5,
    ) -> None:
        if every < 1:
            raise ProgressError(f"every must be >= 1, got {every}")
        self.prefix = prefix
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self.refresh_s = refresh_s
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._first: tuple[int, float] | None = None  # (step before, elapsed) at the start
        self._drawn = 0.0
        self._line_open = False
        self._log: TextIO | None = None
        if log_path is not None:
            try:
                Path(log_path).parent.mkdir(parents=True, exist_ok=True)
                self._log = open(log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            except OSError as exc:
                raise ProgressError(f"--log {log_path}: cannot append to it: {exc}") from exc

    def __enter__(self) -> TrainingProgress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def rate(self, info: StepInfo) -> float:
        """Steps per second over the steps this process has run (nan before two)."""
        if self._first is None:
            return float("nan")
        steps = info.step - self._first[0]
        seconds = info.elapsed_s - self._first[1]
        return steps / seconds if steps > 0 and seconds > 0 else float("nan")

    def line(self, info: StepInfo) -> str:
        rate = self.rate(info)
        eta = (info.steps - info.step) / rate if rate > 0 else float("nan")
        rate_text = f"{rate:.2f}" if rate == rate else "-"
        return (
            f"{self.prefix}step {info.step}/{info.steps} loss {info.loss:.4f} "
            f"{rate_text} steps/s ETA {format_duration(eta)}"
        )

    def __call__(self, info: StepInfo) -> None:
        if self._first is None:
            # the rate is measured from the end of this process's first step
            self._first = (info.step, info.elapsed_s)
        if self._log is not None:
            self._log.write(
                f"{_utc_now()} step {info.step}/{info.steps} loss {info.loss:.6f} "
                f"lr {info.lr:.3e} seconds {info.elapsed_s:.1f}\n"
            )
        last = info.step == info.steps
        if self.live:
            now = time.monotonic()
            if last or now - self._drawn >= self.refresh_s:
                self._drawn = now
                self.stream.write("\r\x1b[2K" + self.line(info))
                self._line_open = True
                if last:
                    self._end_line()
                self.stream.flush()
        elif last or info.step % self.every == 0:
            self.stream.write(self.line(info) + "\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        """A free-text line for the log file (the caller prints it where it wants; a
        live line on the terminal is ended first so the two do not mix)."""
        self._end_line()
        self.stream.flush()
        if self._log is not None:
            stamp = _utc_now()
            for line in text.splitlines() or [""]:
                self._log.write(f"{stamp} {line}\n")

    def _end_line(self) -> None:
        if self._line_open:
            self.stream.write("\n")
            self._line_open = False

    def close(self) -> None:
        self._end_line()
        if self._log is not None:
            self._log.close()
            self._log = None
