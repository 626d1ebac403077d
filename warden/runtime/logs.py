"""Logging a failure that repeats without drowning the log in it.

A central Redis outage used to log the same line every 0.5 s. :class:`Repeats` logs
the first occurrence of a failure at once, holds back the ones that follow within a
quiet period, and logs the next one after it with their count (``central Redis
unreachable: ... (x38 in 60s)``); when the failure ends it says so, with the count of
what was held back.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional

#: seconds after a logged failure in which its repeats are counted, not logged
QUIET_SECONDS = 60.0
#: what a JSON log line carries of a record's ``extra`` fields, where they apply
STRUCTURED_FIELDS = ("service", "container", "change", "epoch")


class Throttle:
    """Which occurrences of a repeating thing, each known by a key, to let through: the
    first, then the first after each quiet period; the ones in between are counted.
    Repeated log lines (:class:`Repeats`) and repeated alerts share it."""

    def __init__(self, quiet_seconds: float) -> None:
        self.quiet_seconds = quiet_seconds
        #: key -> [when last let through (monotonic), held back since]
        self._seen: dict[str, list] = {}
        self._lock = threading.Lock()

    def admit(self, key: str) -> Optional[tuple[int, float]]:
        """None to hold this occurrence back; else how many were held back since the
        last one let through, and how many seconds ago that was (0, 0.0 the first time)."""
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.quiet_seconds:
                seen[1] += 1
                return None
            self._seen[key] = [now, 0]
        return (seen[1], now - seen[0]) if seen is not None else (0, 0.0)

    def end(self, key: str) -> Optional[int]:
        """Forget ``key``: None if it was never let through, else how many were held
        back since the last one that was."""
        with self._lock:
            seen = self._seen.pop(key, None)
        return None if seen is None else seen[1]


class Repeats:
    """One logger's repeating failures, each known by a key (``"central-redis"``)."""

    def __init__(self, logger: logging.Logger, quiet_seconds: float = QUIET_SECONDS) -> None:
        self.logger = logger
        self._throttle = Throttle(quiet_seconds)

    def failed(self, key: str, level: int, message: str, *args: Any, **kw: Any) -> None:
        """The failure ``key`` happened (again): log it now, or count it."""
        admitted = self._throttle.admit(key)
        if admitted is None:
            return
        held, since = admitted
        if held:
            message = f"{message} (x{held + 1} in {since:.0f}s)"
        self.logger.log(level, message, *args, **kw)

    def ended(self, key: str, message: str, *args: Any, **kw: Any) -> None:
        """The failure ``key`` is over: say so (at INFO) if it had been logged."""
        held = self._throttle.end(key)
        if held is None:
            return
        if held:
            message = f"{message} ({held} more failures since the last line)"
        self.logger.info(message, *args, **kw)
