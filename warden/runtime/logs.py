"""Logging a failure that repeats without drowning the log in it.

A central Redis outage used to log the same line every 0.5 s. :class:`Repeats` logs
the first occurrence of a failure at once, holds back the ones that follow within a
quiet period, and logs the next one after it with their count (``central Redis
unreachable: ... (x38 in 60s)``); when the failure ends it says so, with the count of
what was held back.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any, Optional

#: seconds after a logged failure in which its repeats are counted, not logged
QUIET_SECONDS = 60.0
#: what a JSON log line carries of a record's ``extra`` fields, where they apply
STRUCTURED_FIELDS = ("service", "container", "change", "epoch")

#: what --log-level, WARDEN_LOG_LEVEL and ``logLevel`` accept (in any case)
LEVELS = ("debug", "info", "warning", "error")
#: what --log-format, WARDEN_LOG_FORMAT and ``logFormat`` accept (in any case)
FORMATS = ("text", "json")
#: the level and format when nothing names them
DEFAULTS = {"level": "info", "format": "text"}


def _rfc3339(seconds: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds: ``2026-12-03T10:15:02.123Z``."""
    stamp = datetime.fromtimestamp(seconds, timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": _rfc3339(record.created), "level": record.levelname.lower(),
                 "logger": record.name, "msg": record.getMessage()}
        # The fields a log search filters on, where the line has them.
        for name in STRUCTURED_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class LogSettings:
    """The process's log level and format. The command line (``--log-level``,
    ``--log-format``) wins; where it is silent, the config's ``logLevel`` /
    ``logFormat`` (the file, or ``WARDEN_LOG_LEVEL`` / ``WARDEN_LOG_FORMAT`` over it)
    apply, at start and again at each SIGHUP."""

    def __init__(self) -> None:
        self.current = dict(DEFAULTS)
        #: what the command line set: a config's value does not change these
        self.given: dict[str, str] = {}

    def start(self, level: Optional[str], fmt: Optional[str], *, given: dict[str, str]) -> None:
        """Logging as the command line and the environment name it, before any config
        is read."""
        self.given = dict(given)
        self._apply({"level": level or DEFAULTS["level"], "format": fmt or DEFAULTS["format"]})

    def use_config(self, level: Optional[str], fmt: Optional[str]) -> list[str]:
        """The config's values where the command line gave none (a value the config
        lacks is the default); the names (``level``, ``format``) whose config value the
        command line overrode."""
        named = {"level": level, "format": fmt}
        kept = [name for name, value in named.items() if value and self.given.get(name, value) != value]
        self._apply({name: self.given.get(name) or value or DEFAULTS[name] for name, value in named.items()})
        return kept

    def _apply(self, settings: dict[str, str]) -> None:
        root = logging.getLogger()
        if settings == self.current and root.handlers:
            return
        self.current = settings
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if settings["format"] == "json" else
                             logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.handlers[:] = [handler]
        root.setLevel(getattr(logging, settings["level"].upper()))
        # Library chatter (urllib3 retries, botocore credentials) is not Warden's news.
        for noisy in ("urllib3", "botocore", "boto3", "watchdog", "redis"):
            logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


#: this process's logging
SETTINGS = LogSettings()


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
