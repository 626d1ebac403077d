"""Stoppable worker threads and the backoff they share."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Optional

from warden.runtime.logs import Repeats
from warden.signals import Receivers

# The name operators filter logs on, kept from before the module moved.
logger = logging.getLogger("warden.threads")


class Backoff:
    """Capped exponential backoff with jitter: about 0.5 s, 1 s, 2 s ... up to ``cap``
    seconds, each delay shortened by a random part of up to ``jitter`` of it, so a fleet
    that lost one server does not come back to it in step."""

    #: first delay after a failure, in seconds
    initial = 0.5
    #: each further failure multiplies the delay by this
    factor = 2.0
    #: the delay never grows past this many seconds
    cap = 60.0
    #: the largest share of a delay taken off at random
    jitter = 0.25

    def __init__(self, initial: float | None = None, cap: float | None = None) -> None:
        if initial is not None:
            self.initial = initial
        if cap is not None:
            self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before retrying."""
        delay = min(self.cap, self.initial * self.factor ** self.failures)
        self.failures += 1
        return delay * (1.0 - self.jitter * random.random())

    def reset(self) -> None:
        """A success: the next failure starts again from the initial delay."""
        self.failures = 0


class Deadline:
    """One stop deadline for a whole process: every join waits only for what is left
    of it, and says which threads were still running when it passed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left, never below 0."""
        return max(0.0, self.at - time.monotonic())

    def join(self, *threads: Optional[threading.Thread]) -> list[str]:
        """Join each started thread until the deadline; the names of those still
        running."""
        late = []
        for thread in threads:
            if thread is None or thread.ident is None:
                continue
            thread.join(self.left())
            if thread.is_alive():
                late.append(thread.name)
        return late


class StoppableThread(threading.Thread):
    """A daemon thread that waits on ``stop_event`` instead of sleeping, so that
    ``stop()`` ends it promptly. Its ``receivers``, if it has any, are connected when it
    starts and disconnected when it is asked to stop."""

    #: the signals the thread listens to
    receivers: Optional[Receivers] = None

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.stop_event = threading.Event()

    def start(self) -> None:
        if self.receivers is not None:
            self.receivers.connect()
        super().start()

    def stop(self) -> None:
        """Ask the thread to finish its current step and end."""
        if self.receivers is not None:
            self.receivers.disconnect()
        self.stop_event.set()
        self.on_stop()

    def on_stop(self) -> None:
        """Hook: wake the thread if it blocks on something other than ``stop_event``."""

    @property
    def stopping(self) -> bool:
        """True once ``stop()`` was called."""
        return self.stop_event.is_set()


class ConnectionLoop(StoppableThread):
    """A subscriber that holds one connection: it opens it (:meth:`open`) and reads from
    it (:meth:`serve`) until it breaks or the thread is asked to stop; then it backs off
    and opens it again. :meth:`serve` calls :meth:`held` once the connection has proved
    itself (the stream opened, the subscription confirmed, a receive answered): that
    sets ``connected``, resets the backoff and, after a loss, counts a reconnect.
    Subclasses name what they hold in ``what`` and the errors that mean it was lost in
    ``lost``."""

    #: first delay before opening again, in seconds
    backoff_initial = 0.5
    #: the delay never grows past this many seconds
    backoff_cap = 30.0
    #: the first retry after a held connection is lost comes at once
    retry_at_once = False
    #: what the connection is, for log lines
    what = "connection"
    #: the errors that mean the connection was lost (anything else is a bug: logged
    #: with its traceback, and the loop goes on the same way)
    lost: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self, name: str) -> None:
        super().__init__(name)
        #: set while the connection is held (for start-up ordering and /healthz)
        self.connected = threading.Event()
        #: times the connection came back after a loss
        self.reconnects = 0
        self._backoff = Backoff(self.backoff_initial, self.backoff_cap)
        #: a connection failed or was lost since one was last held
        self._failed = False
        self._held_now = False
        self._repeats = Repeats(logger)

    def open(self) -> Any:
        """Open the connection (raise one of ``lost`` when it cannot be)."""
        raise NotImplementedError

    def serve(self, connection: Any) -> None:
        """Read from ``connection`` until it breaks (raise one of ``lost``) or
        ``stopping``; returning otherwise means the other side ended it."""
        raise NotImplementedError

    def close(self, connection: Any) -> None:
        """Release ``connection``; it may already be broken."""

    def reconnected(self) -> None:
        """Hook: a connection is held again after a loss or failed attempts."""

    def explain(self, why: Any) -> str:
        """Why the connection could not be opened, as the log line says it."""
        return f"unreachable ({why})"

    def held(self) -> None:
        """The connection works (called by :meth:`serve`; only the first call per
        connection counts)."""
        if self._held_now:
            return
        self._held_now = True
        self.connected.set()
        self._backoff.reset()
        if self._failed:
            self._failed = False
            self.reconnects += 1
            self._repeats.ended("unreachable", "%s back", self.what)
            self.reconnected()

    def run(self) -> None:
        while not self.stopping:
            connection, why, was_held = None, None, False
            try:
                connection = self.open()
                if not self.stopping:
                    self.serve(connection)
                why = "it ended"
            except self.lost as error:
                why = error
            except Exception as error:  # noqa: BLE001 - a bug must not end the subscriber
                logger.exception("%s failed", self.what)
                why = error
            finally:
                was_held, self._held_now = self._held_now, False
                self.connected.clear()
                if connection is not None:
                    try:
                        self.close(connection)
                    except Exception:  # noqa: BLE001 - closing a broken connection may fail any way
                        pass
            if self.stopping:
                break
            self._failed = True
            delay = 0.0 if self.retry_at_once and was_held else self._backoff.next_delay()
            if was_held:
                logger.warning("%s lost (%s); again in %.1fs", self.what, why, delay)
            else:
                # While it stays down: once, then once a quiet period with a count.
                self._repeats.failed("unreachable", logging.WARNING, "%s %s; again in %.1fs",
                                     self.what, self.explain(why), delay)
            self.stop_event.wait(delay)
