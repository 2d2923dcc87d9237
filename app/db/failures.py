"""Writes that could not be made (a full disk, a read-only or unreachable database): counted
each time, and logged loudly but at most once a minute, not once per attempt."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable


class FailedWrites:
    """Reports failed writes of one kind: ``on_failure`` every time (a metric), a log line with
    ``message`` (formatted with the error, then the call's own arguments) at most once per
    ``every`` seconds."""

    def __init__(
        self,
        logger: logging.Logger,
        message: str,
        *,
        on_failure: Callable[[], None] | None = None,
        level: int = logging.ERROR,
        every: float = 60.0,
    ) -> None:
        self._logger = logger
        self._message = message
        self._on_failure = on_failure
        self._level = level
        self._every = every
        self._logged = -math.inf

    def __call__(self, error: BaseException, *args: object) -> None:
        if self._on_failure is not None:
            self._on_failure()
        now = time.monotonic()
        if now - self._logged >= self._every:
            self._logged = now
            self._logger.log(self._level, self._message, error, *args)
