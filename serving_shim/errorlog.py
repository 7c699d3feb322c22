"""Errors a long-running loop survives: counted by kind, logged at most once per ``LOG_EVERY_S`` per kind.

A failure that repeats at line rate (accepting under a file-descriptor limit, a full disk under the
TensorBoard writer) must neither stop the daemon nor fill the disk with its log: the first occurrence of a
kind is logged with its traceback, later ones as one line per interval saying how many were not logged.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable

LOG_EVERY_S = 10.0


class ErrorLog:
    def __init__(self, logger: logging.Logger, *, every_s: float = LOG_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log, self.every_s, self.clock = logger, every_s, clock
        self.counts: Counter[str] = Counter()  # errors so far, by kind
        self._logged_s: dict[str, float] = {}
        self._quiet: Counter[str] = Counter()  # not logged since the kind's last line

    def record(self, kind: str, error: BaseException, doing: str) -> None:
        """Count ``error`` under ``kind``; log it unless that kind was logged less than ``every_s`` ago."""
        self.counts[kind] += 1
        now = self.clock()
        last_s = self._logged_s.get(kind, -math.inf)
        if now - last_s < self.every_s:
            self._quiet[kind] += 1
            return
        self._logged_s[kind] = now
        quiet, self._quiet[kind] = self._quiet[kind], 0
        more = f" ({quiet} more since the last report)" if quiet else ""
        self.log.error("%s failed: %s: %s%s; going on", doing, type(error).__name__, error, more,
                       exc_info=error if last_s == -math.inf else None)
