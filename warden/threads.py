"""Stoppable worker threads and the backoff they share."""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)


class Backoff:
    """Capped exponential backoff: 0.5 s, 1 s, 2 s ... up to ``cap`` seconds."""

    #: first delay after a failure, in seconds
    initial = 0.5
    #: each further failure multiplies the delay by this
    factor = 2.0
    #: the delay never grows past this many seconds
    cap = 60.0

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
        return delay

    def reset(self) -> None:
        """A success: the next failure starts again from the initial delay."""
        self.failures = 0


class StoppableThread(threading.Thread):
    """A daemon thread that waits on ``stop_event`` instead of sleeping, so that
    ``stop()`` ends it promptly."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.stop_event = threading.Event()

    def stop(self) -> None:
        """Ask the thread to finish its current step and end."""
        self.stop_event.set()
        self.on_stop()

    def on_stop(self) -> None:
        """Hook: wake the thread if it blocks on something other than ``stop_event``."""

    @property
    def stopping(self) -> bool:
        """True once ``stop()`` was called."""
        return self.stop_event.is_set()
