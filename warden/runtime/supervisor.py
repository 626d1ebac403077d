"""One Supervisor for every part of a running Warden.

Each part (a thread, a handler, a step such as a log line once a group is up) is a
:class:`Component`: it starts, is asked to stop, and names the threads to join. The
Supervisor starts the components in the order given, and stops them in reverse under
one deadline (``stopTimeoutSeconds``):

1. leadership is handed back first (the Manager's component), whatever else is in
   flight;
2. every other part is asked to stop, then joined, newest first, each only for what is
   left of the deadline, so one part stuck in a call never keeps the others from
   stopping;
3. the sinks (handlers: they receive what the others emit) are stopped last, once
   nothing upstream can emit any more, and their threads joined.

What is still running at the deadline is returned by name, for the caller to log and
abandon. A group's last component joined logs ``<group> stopped``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional, Sequence

from warden.runtime.threads import Deadline

# The name operators filter logs on, kept from before the module moved.
logger = logging.getLogger("warden.supervisor")


class Component:
    """A part the Supervisor starts and stops. Subclasses override what they need."""

    #: the group it belongs to (``registrar``, ``manager``, ``drain``...), for log lines
    group = ""
    #: True for a part that receives what the others emit: stopped after they are joined
    sink = False

    def start(self) -> None:
        """Start it (in the Supervisor's order)."""

    def request_stop(self) -> None:
        """Ask it to finish its step and end; never blocks."""

    def threads(self) -> Sequence[Optional[threading.Thread]]:
        """The threads to join once it is asked to stop."""
        return ()

    def hand_back(self, deadline: Deadline) -> list[str]:
        """First of all at shutdown: what must happen before anything else stops (the
        Manager hands leadership back). Returns the threads still running."""
        return []

    def register(self, telemetry: Any) -> None:
        """Its threads for ``/livez``, and whatever else it shows on ``/metrics``."""
        for thread in self.threads():
            if thread is not None:
                telemetry.thread_check(thread)


class ThreadPart(Component):
    """One stoppable thread. ``before`` runs just before it starts (to wait for what it
    needs); ``checks(telemetry)`` registers what it shows beside its thread."""

    def __init__(self, thread: Any, group: str, before: Optional[Callable[[], None]] = None,
                 checks: Optional[Callable[[Any], None]] = None) -> None:
        self.thread = thread
        self.group = group
        self.before = before
        self.checks = checks

    def start(self) -> None:
        if self.before is not None:
            self.before()
        self.thread.start()

    def request_stop(self) -> None:
        self.thread.stop()

    def threads(self) -> Sequence[Optional[threading.Thread]]:
        return (self.thread,)

    def register(self, telemetry: Any) -> None:
        super().register(telemetry)
        if self.checks is not None:
            self.checks(telemetry)


class LeaderPart(ThreadPart):
    """The Manager's election thread: at shutdown it is stopped and joined before
    anything else, so leadership is handed back while the rest still runs."""

    def hand_back(self, deadline: Deadline) -> list[str]:
        self.thread.stop()
        return deadline.join(self.thread)

    def register(self, telemetry: Any) -> None:
        super().register(telemetry)
        telemetry.thread_check(self.thread.watch)


class HandlerPart(Component):
    """A handler: given the central Redis (when the process has one), connected to its
    signals and started; stopped and disconnected after every part that emits."""

    sink = True

    def __init__(self, handler: Any, group: str, central: Any = None) -> None:
        self.handler = handler
        self.group = group
        self.central = central

    def start(self) -> None:
        if self.central is not None:
            self.handler.use_central(self.central.commands)
        self.handler.connect()
        self.handler.start()

    def request_stop(self) -> None:
        try:
            self.handler.stop()
        finally:
            self.handler.disconnect()

    def threads(self) -> Sequence[Optional[threading.Thread]]:
        return tuple(self.handler.threads())

    def register(self, telemetry: Any) -> None:
        super().register(telemetry)
        self.handler.register(telemetry)


class Step(Component):
    """Something done in order, with no thread: ``on_start`` when its turn comes,
    ``on_stop`` when asked to stop; ``checks`` as for a thread."""

    def __init__(self, group: str, on_start: Optional[Callable[[], None]] = None,
                 on_stop: Optional[Callable[[], None]] = None,
                 checks: Optional[Callable[[Any], None]] = None) -> None:
        self.group = group
        self.on_start = on_start
        self.on_stop = on_stop
        self.checks = checks

    def start(self) -> None:
        if self.on_start is not None:
            self.on_start()

    def request_stop(self) -> None:
        if self.on_stop is not None:
            self.on_stop()

    def register(self, telemetry: Any) -> None:
        if self.checks is not None:
            self.checks(telemetry)


class Supervisor:
    """Starts ``components`` in order and stops them in reverse under one deadline."""

    def __init__(self, components: Sequence[Component]) -> None:
        self.components = list(components)
        #: the components started so far, in start order
        self.started: list[Component] = []

    def register(self, telemetry: Any) -> None:
        for component in self.components:
            component.register(telemetry)

    def start(self) -> None:
        """Start each component in turn; one that raises stops the start there (what
        started is stopped by :meth:`stop`)."""
        for component in self.components:
            component.start()
            self.started.append(component)

    def stop(self, seconds: float) -> list[str]:
        """Hand back, then stop and join everything started, within ``seconds``; the
        names of the threads still running then."""
        deadline = Deadline(seconds)
        late: list[str] = []
        newest_first = list(reversed(self.started))
        for component in newest_first:
            late += component.hand_back(deadline)
        for sinks in (False, True):
            stage = [c for c in newest_first if c.sink is sinks]
            for component in stage:
                component.request_stop()
            for component in stage:
                late += deadline.join(*component.threads())
        for group in dict.fromkeys(c.group for c in self.started if c.group):
            logger.info("%s stopped", group)
        self.started = []
        return late
