"""Progress of long loops: a tqdm bar on a terminal (or in a notebook), and in a log file a
line every `LINE_SECONDS` instead of thousands of carriage-return updates."""

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tqdm import tqdm

log = logging.getLogger("mmjax")
LINE_SECONDS = 30.0


class LineProgress:
    """tqdm's `update` / `set_postfix` / `close` (and iteration over `iterable`), logged as one
    INFO line at most every LINE_SECONDS, plus one at the end."""

    def __init__(
        self,
        iterable: Iterable | None,
        total: int | None,
        initial: int,
        desc: str,
        unit: str,
    ):
        self.iterable, self.total, self.n = iterable, total, initial
        self.desc, self.unit, self.postfix = desc, unit, ""
        self._first, self._started = initial, time.perf_counter()
        self._last_line, self._logged = self._started, initial
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self._last_line >= LINE_SECONDS:
            self._line(now)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self._closed and self.n > self._logged:  # unless the last line said it all
            self._line(time.perf_counter())
        self._closed = True

    def _line(self, now: float) -> None:
        self._last_line, self._logged = now, self.n
        rate = (self.n - self._first) / max(now - self._started, 1e-9)
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        line = f"{self.desc}: {done} {self.unit}s{share}, {rate:.2f} {self.unit}/s {self.postfix}"
        log.info(line.rstrip())


Progress = tqdm | LineProgress


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    initial: int = 0,
    desc: str,
    unit: str,
    enabled: bool = True,
) -> Progress:
    """A tqdm bar when stderr is a terminal or a notebook runs us, else a LineProgress; a
    disabled tqdm (which does nothing) when not `enabled`."""
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if sys.stderr.isatty() or "ipykernel" in sys.modules:
        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit)
    return LineProgress(iterable, total, initial, desc, unit)


def progress_log(enabled: bool) -> Callable[[str], None]:
    """A long job's progress messages: logged at INFO on the "mmjax" logger, or dropped."""
    return log.info if enabled else _drop


def _drop(message: str) -> None:
    del message


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a message comes (tests swap it per test)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        del value


def log_to_stderr(level: int = logging.INFO) -> None:
    """Show mmjax's messages (and Python warnings) on stderr from `level` up, with the time in
    front when stderr is a log file rather than a terminal; what the `mmjax` command does, for
    scripts. Calling it again replaces the earlier setting."""
    form = "mmjax %(levelname)s: %(message)s"
    if not sys.stderr.isatty():
        form = "%(asctime)s " + form
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(form, datefmt="%Y-%m-%d %H:%M:%S"))
    handler.mmjax_stderr = True
    for name in ("mmjax", "py.warnings"):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "mmjax_stderr", False)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    logging.captureWarnings(True)
