"""Download progress: a bar on a terminal, a log line every few seconds elsewhere, and the
figures ``/health`` reports.

``huggingface_hub`` drives a ``tqdm`` class of our choosing (``hf_hub_download(tqdm_class=...)``);
``DownloadProgress.bar_class()`` hands it one that reports here as well as drawing the bar.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm  # type: ignore[import-untyped]

logger = logging.getLogger(__name__)


class DownloadProgress:
    """How far one file's download has got. Written by the download thread, read by anyone."""

    def __init__(
        self,
        name: str,
        *,
        log_every: float = 5.0,
        terminal: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.total: int | None = None
        self.done = 0
        self._initial = 0
        self._log_every = log_every
        self._terminal = sys.stderr.isatty() if terminal is None else terminal
        self._clock = clock
        self._started = 0.0
        self._last_log = 0.0
        self._lock = threading.Lock()

    @property
    def percent(self) -> float | None:
        """Percent of the file on disk, or None before the size is known."""
        with self._lock:
            if not self.total:
                return None
            return round(min(100.0, 100.0 * self.done / self.total), 1)

    def begin(self, total: int | None, initial: int) -> None:
        """A transfer starts, ``initial`` bytes already on disk (a resumed download)."""
        with self._lock:
            self.total, self.done, self._initial = total, initial, initial
            self._started = self._last_log = self._clock()
        if initial:
            logger.info("resuming the download of %s at %s", self.name, _megabytes(initial))

    def advance(self, count: int) -> None:
        """``count`` more bytes are on disk (negative when a download restarts from zero)."""
        with self._lock:
            self.done += count
            if count < 0:
                self._initial = min(self._initial, self.done)
            now = self._clock()
            due = not self._terminal and now - self._last_log >= self._log_every
            if due:
                self._last_log = now
                line = self._line(now)
        if due:
            logger.info("%s", line)

    def _line(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-6)
        rate = (self.done - self._initial) / elapsed
        if not self.total:
            return f"downloading {self.name}: {_megabytes(self.done)}, {rate / 1e6:.1f} MB/s"
        left = max(self.total - self.done, 0)
        eta = time.strftime("%H:%M:%S", time.gmtime(left / rate)) if rate > 0 else "unknown"
        return (
            f"downloading {self.name}: {100 * self.done / self.total:.0f}% of "
            f"{_megabytes(self.total)}, {rate / 1e6:.1f} MB/s, {eta} left"
        )

    def bar_class(self) -> type[tqdm]:
        """A ``tqdm`` class for ``hf_hub_download`` that reports to this object."""
        progress = self

        class _Bar(tqdm):  # type: ignore[misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs.pop("name", None)
                kwargs["disable"] = not progress._terminal
                super().__init__(*args, **kwargs)
                progress.begin(kwargs.get("total"), kwargs.get("initial") or 0)

            def update(self, n: float | None = 1) -> bool | None:
                progress.advance(int(n or 0))
                return super().update(n)  # type: ignore[no-any-return]

        return _Bar


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"
