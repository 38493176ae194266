"""Progress of the CLI's long jobs (bench runs and sweeps, simulate sweeps and
long runs, profiling, engine start-up in ``serve``).

The rule:

- Progress goes to stderr, never stdout: stdout carries the results and the
  JSON that scripts parse.
- Library code (``ecoserve.bench``, ``ecoserve.sim``, ``ecoserve.engine``,
  ``ecoserve.live``) never prints progress. Its long functions take an
  ``on_progress(done, total, detail)`` callback, None by default (``total``
  may be None when unknown); the command builds a :class:`Progress`, which is
  such a callable, and passes it in.
- On a terminal: one line redrawn in place (at most 10 times a second) with a
  bar when the total is known, left on screen when the job ends. Log records
  written to the same terminal meanwhile clear the line first.
- Anywhere else (CI logs, pipes, files): plain lines, never carriage returns:
  one at the first update, then at most one every ``LINE_INTERVAL_S`` seconds
  (an unchanged one at most every ``LINE_HEARTBEAT_S``), and a last one when
  the job ends.
- ``-q/--quiet`` (``quiet_option``; ``--no-progress``, the earlier flag, is
  its alias) silences progress, and only progress: errors, warnings and
  results still print.
- A job that is often quick (``simulate run``) passes ``delay``: nothing
  shows until it has run that long.

Our own few lines rather than tqdm: the plain-line mode for logs is ours
either way (tqdm on a pipe is silent or writes carriage returns), one code
path words both modes alike and is tested with an injected clock, and the
base install (coordinator only) gains no dependency.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

import click

TTY_REFRESH_S = 0.1
LINE_INTERVAL_S = 5.0
LINE_HEARTBEAT_S = 30.0
BAR_WIDTH = 20


def quiet_option(f=None, *, short: bool = True, legacy: bool = True,
                 help: str = "No progress on stderr (errors, warnings and results still print)."):
    """``--quiet`` as the ``quiet`` parameter: ``@quiet_option`` or
    ``@quiet_option(short=False, legacy=False)``. ``short``: also ``-q`` (not
    for ``serve``, where vLLM's ``-q`` is ``--quantization``). ``legacy``: the
    commands that had ``--progress/--no-progress`` keep both (``--no-progress``
    is ``--quiet``; ``--progress``, hidden, is the default now)."""

    def deco(f):
        names = ["--quiet", *(["-q"] if short else []), *(["--no-progress"] if legacy else [])]
        if legacy:
            f = click.option("--progress", "_progress", is_flag=True, hidden=True, expose_value=False)(f)
        return click.option(*names, "quiet", is_flag=True, help=help)(f)

    return deco(f) if f is not None else deco


def elapsed(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """One job's progress on ``stream`` (default: stderr at creation). Call it
    (or ``update``) with ``(done, total, detail)``; ``close`` when the job
    ends (or use it as a context manager). ``tty`` and ``clock`` default to the
    stream's and ``time.monotonic`` (tests inject both)."""

    def __init__(self, desc: str, unit: str = "", total: int | None = None, *, quiet: bool = False,
                 delay: float = 0.0, stream: IO[str] | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.desc, self.unit, self.total = desc, unit, total
        self.done, self.detail = 0, ""
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = not quiet
        self.tty = _is_tty(self.stream) if tty is None else tty
        self.delay = delay
        self.clock = clock
        self.t0 = clock()
        self._last_out: float | None = None  # when we last wrote
        self._last_state: tuple | None = None  # (done, total, detail) last written
        self._on_screen = 0  # terminal: characters of the line now drawn
        self._guard: _ClearLine | None = None
        self._updated = False  # close() shows nothing for a job that never reported
        self._closed = False

    def __call__(self, done: int, total: int | None = None, detail: str | None = None) -> None:
        self.update(done, total, detail)

    def update(self, done: int, total: int | None = None, detail: str | None = None) -> None:
        if self._closed:
            return
        self._updated = True
        self.done = done
        if total is not None:
            self.total = total
        if detail is not None:
            self.detail = detail
        if not self.enabled:
            return
        now = self.clock()
        if self._last_out is None and now - self.t0 < self.delay:
            return
        if self.tty:
            if self._last_out is None or now - self._last_out >= TTY_REFRESH_S:
                self._draw(now)
        elif self._last_out is None:
            self._line(now)
        elif now - self._last_out >= LINE_INTERVAL_S and (
            self._state() != self._last_state or now - self._last_out >= LINE_HEARTBEAT_S
        ):
            self._line(now)

    def close(self, detail: str | None = None) -> None:
        """The last state, once: redrawn and left on screen, or a last line
        (none if it would repeat the one before; nothing if nothing showed
        yet within ``delay``, or if the job never reported)."""
        if self._closed:
            return
        self._closed = True
        if detail is not None:
            self.detail = detail
        if not self.enabled or not self._updated:
            return
        now = self.clock()
        if self._last_out is None and now - self.t0 < self.delay:
            return
        if self.tty:
            self._draw(now)
            self._write("\n")
            self._on_screen = 0
            if self._guard is not None:
                self._guard.remove()
                self._guard = None
        elif self._state() != self._last_state:
            self._line(now)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- drawing ------------------------------------------------------------------------
    def _state(self) -> tuple:
        return self.done, self.total, self.detail

    def _count(self) -> str:
        n = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        return f"{n} {self.unit}" if self.unit else n

    def text(self, now: float, *, bar: bool) -> str:
        """The line without its end. A plain line: ``desc: done/total unit,
        detail [elapsed]``; the terminal's: ``desc [####----] done/total unit
        [elapsed] detail`` (the detail last: it is what a narrow one cuts)."""
        took = f"[{elapsed(now - self.t0)}]"
        if not bar:
            return f"{self.desc}: {self._count()}" + (f", {self.detail}" if self.detail else "") + f" {took}"
        parts = [self.desc]
        if self.total:
            k = min(BAR_WIDTH, max(0, round(BAR_WIDTH * self.done / self.total)))
            parts.append("[" + "#" * k + "-" * (BAR_WIDTH - k) + "]")
        parts += [self._count(), took] + ([self.detail] if self.detail else [])
        return " ".join(parts)

    def _line(self, now: float) -> None:
        self._write(self.text(now, bar=False) + "\n")
        self._last_out, self._last_state = now, self._state()

    def _draw(self, now: float) -> None:
        text = self.text(now, bar=True)[: max(10, _columns(self.stream) - 1)]
        self._write("\r" + text + " " * max(0, self._on_screen - len(text)))
        self._on_screen = len(text)
        self._last_out, self._last_state = now, self._state()
        if self._guard is None:
            self._guard = _ClearLine(self)

    def clear_line(self) -> None:
        """Terminal: blank the drawn line (before someone else writes there);
        the next update draws it again."""
        if self._on_screen:
            self._write("\r" + " " * self._on_screen + "\r")
            self._on_screen = 0
            self._last_out = None

    def _write(self, s: str) -> None:
        try:
            self.stream.write(s)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr: stop trying
            self.enabled = False


class _ClearLine(logging.Filter):
    """On the root logger's handlers that write to the bar's stream: clear the
    bar's line before a record is written, so log lines never glue onto it."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress
        self.handlers = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is progress.stream]
        for h in self.handlers:
            h.addFilter(self)

    def filter(self, record: Any) -> bool:
        self.progress.clear_line()
        return True

    def remove(self) -> None:
        for h in self.handlers:
            h.removeFilter(self)


def _is_tty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def _columns(stream: IO[str]) -> int:
    """The terminal's width: $COLUMNS, else the stream's terminal, else 80."""
    try:
        cols = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        cols = 0
    if cols <= 0:
        try:
            cols = os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            cols = 0
    return cols if cols > 0 else 80
