"""Two small subscribers: the service-file watcher and the Redx Redis watcher.

Each notices one kind of change and emits a signal; neither writes a route.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Optional

import redis
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from warden import signals
from warden.config import Config
from warden.runtime.supervisor import Component
from warden.runtime.threads import StoppableThread
from warden.services import ServiceCatalog

logger = logging.getLogger(__name__)


class _ServiceFileEvents(FileSystemEventHandler):
    """Passes on events for service files only; never raises into watchdog's thread
    (an exception there ends the observer)."""

    def __init__(self, watcher: "ServiceWatcher") -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            paths = [event.src_path, getattr(event, "dest_path", "") or ""]
            hits = [p for p in paths if p and self.watcher.catalog.watches(os.fsdecode(p))]
            if hits and event.event_type != "opened" and event.event_type != "closed_no_write":
                self.watcher.changed(hits)
        except Exception:  # noqa: BLE001 - keep the observer alive whatever happens
            logger.exception("service watcher failed on %s", event)


class ServiceWatcher(Component):
    """Watches the service file (or folder), loads the catalog again once per burst of
    file events (editors write a file in several steps) and emits
    ``services_reloaded``. One per process: the Registrar and the Manager share its
    catalog."""

    #: how long a burst of file events is gathered before one reload, in seconds
    settle_seconds = 0.1
    #: the second look at a vanished file comes this long after its grace time, so the
    #: reload it asks for finds the grace over even when the first reload came late
    recheck_margin = 0.5

    def __init__(self, catalog: ServiceCatalog) -> None:
        self.catalog = catalog
        self.observer: Optional[Any] = None
        self._timer: Optional[threading.Timer] = None
        self._recheck: Optional[threading.Timer] = None
        self._paths: set[str] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start watching the folder that holds the service files."""
        path = self.catalog.path
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        if not os.path.isdir(folder):
            logger.warning("cannot watch %s: its folder does not exist", self.catalog.display)
            return
        self.observer = Observer()
        self.observer.name = "warden-service-watch"
        self.observer.schedule(_ServiceFileEvents(self), folder, recursive=False)
        self.observer.daemon = True
        self.observer.start()

    def changed(self, paths: list[str]) -> None:
        """Note changed paths; the reload follows once the burst settles. A file that
        disappeared is looked at once more after the catalog's grace time, when its
        services are retired if it is still gone."""
        with self._lock:
            self._paths.update(paths)
            if self._timer is None:
                self._timer = threading.Timer(self.settle_seconds, self._fire)
                self._timer.daemon = True
                self._timer.start()
            if any(not os.path.exists(p) for p in paths):
                if self._recheck is not None:
                    self._recheck.cancel()
                self._recheck = threading.Timer(
                    self.catalog.gone_grace_seconds + self.settle_seconds + self.recheck_margin,
                    self._fire_recheck, args=(sorted(paths),))
                self._recheck.daemon = True
                self._recheck.start()

    def _fire_recheck(self, paths: list[str]) -> None:
        with self._lock:
            self._recheck = None
        gone = [p for p in paths if not os.path.exists(p)]
        logger.info("service files looked at again after the grace time: %s",
                    f"gone: {', '.join(gone)}" if gone else "back")
        self._reload(paths)

    def _fire(self) -> None:
        with self._lock:
            paths, self._paths, self._timer = sorted(self._paths), set(), None
        logger.info("service files changed: %s", ", ".join(paths))
        self._reload(paths)

    def reload_now(self) -> int:
        """Read the service files again now (SIGHUP), with the same rules as after a
        change; the number of services in force."""
        return len(self._reload([self.catalog.path]))

    def _reload(self, paths: list[str]) -> tuple[Any, ...]:
        services, problems = self.catalog.load()
        for problem in problems:
            (logger.warning if problem.warning else logger.error)("service file problem: %s", problem)
        signals.send(signals.services_reloaded, self, services=services, paths=paths)
        return tuple(services)

    def register(self, telemetry: Any) -> None:
        """The service files' error count on ``/metrics``."""
        telemetry.counter_source("warden_service_file_errors",
                                 "Errors found in the service files (a broken file counts at each load)",
                                 lambda: self.catalog.errors)

    def request_stop(self) -> None:
        """Stop watching, without waiting."""
        with self._lock:
            for timer in (self._timer, self._recheck):
                if timer is not None:
                    timer.cancel()
        if self.observer is not None:
            self.observer.stop()

    def threads(self) -> tuple[Optional[Any], ...]:
        """The watchdog observer's thread, once started."""
        return (self.observer,)


class RedxWatcher(StoppableThread):
    """Notices a Redx Redis that was flushed, restarted or unreachable and came back
    (its routes are not persisted), and asks for a sweep.

    Once a second it reads the server's run id and checks that the keys Warden wrote
    still exist, in one round trip.
    """

    #: seconds between checks
    interval = 1.0
    #: least seconds between two sweeps it asks for because Warden's keys went missing,
    #: so drift it cannot see mended does not turn into a sweep a second
    min_gap = 3.0

    def __init__(self, config: Config, keys: Callable[[], tuple[str, ...]],
                 client: Optional[redis.Redis] = None) -> None:
        super().__init__("warden-redx-watch")
        self.redis = client or config.nginx_redis.client(
            decode_responses=True, socket_timeout=2, socket_connect_timeout=2)
        self.display = config.nginx_redis.display
        self.keys = keys
        #: True while the Redx Redis answers (for /healthz)
        self.reachable = True
        self._run_id: Optional[str] = None
        self._last_request = 0.0

    def check(self) -> Optional[str]:
        """One look; returns why a sweep is needed, or None."""
        keys = self.keys()
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.info("server")
            if keys:
                pipe.exists(*keys)
            replies = pipe.execute()
        except redis.RedisError as error:
            if self.reachable:
                logger.warning("Redx Redis %s unreachable: %s", self.display, error)
            self.reachable = False
            return None
        reason = None
        if not self.reachable:
            logger.info("Redx Redis %s is back", self.display)
            reason = "Redx Redis is back"
        self.reachable = True
        run_id = replies[0].get("run_id")
        if self._run_id is not None and run_id != self._run_id:
            reason = "Redx Redis restarted"
        self._run_id = run_id
        if keys and replies[1] < len(keys):
            reason = reason or f"Redx Redis lost {len(keys) - replies[1]} of Warden's keys"
        return reason

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            reason = self.check()
            # A restart or a return is one event: sweep at once. Only lost keys (which
            # may stay lost, if something else deletes them) wait out the gap.
            urgent = reason in ("Redx Redis restarted", "Redx Redis is back")
            if reason and (urgent or time.monotonic() - self._last_request >= self.min_gap):
                self._last_request = time.monotonic()
                logger.warning("%s: sweeping", reason)
                signals.send(signals.sweep_requested, self, reason=reason)

    def on_stop(self) -> None:
        pass
