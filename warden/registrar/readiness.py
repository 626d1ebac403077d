"""Readiness probes: a container without a Docker health check is routed only once it
answers on its own address and port.

The Registrar asks :meth:`ReadinessProber.require` whether a container is ready; the
first ask starts a probe. Probes run on a small pool of their own, so a container that
is slow to answer never delays another's route or unroute. A probe retries every 10 ms
at first, then after 3% of the time it has waited (at most 0.5 s), so it is routed at
most about 3% later than it answers; when it succeeds the prober calls ``on_ready`` (the Registrar
queues the container for another look). A container that has not answered after
``report_after`` seconds is logged once and counted, and probing goes on.

Each try has one deadline (connect, request and answer together) and reads at most
the answer's status line, so a server that trickles its answer holds a try no longer
than that. A probe whose last try took half its deadline or more is tried on a slow
lane of its own (one worker): however many containers trickle, the other workers stay
free for every other container.

Probes only ever go to addresses that Docker reports for containers on this host.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Optional

from warden.runtime.threads import StoppableThread

if TYPE_CHECKING:
    from warden.model import Container
    from warden.services import Service

# The name operators filter logs on, kept from before the module moved.
logger = logging.getLogger("warden.readiness")


@dataclass(frozen=True)
class Probe:
    """One readiness check of one container: a TCP connect to ``host:port``, or with
    ``path``, an HTTP GET that must answer below 500."""

    container_id: str
    host: str
    port: int
    path: str = ""
    #: for log lines only
    container_name: str = field(default="", compare=False)

    @property
    def where(self) -> str:
        """``host:port`` (``[v6]:port``), as a URL and a ``Host`` header write it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        where = self.where
        what = f"GET http://{where}{self.path}" if self.path else f"TCP {where}"
        return f"{what} of container {self.container_name or self.container_id[:12]}"

    def glance(self) -> Optional[bool]:
        """A TCP probe's first try, which never waits: a non-blocking connect, and a
        look whether the handshake is already done (to a container on this host it
        usually is, within microseconds). True: it answers; False: refused; None: not
        known yet (and always for an HTTP probe)."""
        if self.path:
            return None
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setblocking(False)
                code = sock.connect_ex((self.host, self.port))
                if code not in (0, errno.EINPROGRESS):
                    return False
                poller = select.poll()
                poller.register(sock, select.POLLOUT)
                if not poller.poll(0):
                    return None
                return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        except OSError:
            return None

    def attempt(self, timeout: float) -> bool:
        """One try, within one deadline ``timeout`` seconds away (connect, request and
        answer together: a server that trickles its answer a byte at a time cannot hold
        a try longer): True when the container answers as required."""
        deadline = time.monotonic() + timeout
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect((self.host, self.port))
                if not self.path:
                    return True
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                sock.sendall(f"GET {self.path} HTTP/1.0\r\nHost: {self.where}\r\nUser-Agent: warden-readiness\r\n"
                             f"Connection: close\r\n\r\n".encode())
                return _status(sock, deadline) < 500
        except OSError:
            return False
        except Exception as error:  # noqa: BLE001 - a try that raises is a failed try, never a lost probe
            logger.debug("%s: try failed: %r", self, error)
            return False


#: the most of an answer a probe reads: its status line is all it needs
STATUS_LINE_BYTES = 1024


def _status(sock: socket.socket, deadline: float) -> int:
    """The status code of the answer on ``sock``, read by ``deadline`` from at most
    :data:`STATUS_LINE_BYTES`; 599 (a failed try) when there is none by then."""
    received = b""
    while b"\r\n" not in received and len(received) < STATUS_LINE_BYTES:
        left = deadline - time.monotonic()
        if left <= 0:
            return 599
        sock.settimeout(left)
        try:
            chunk = sock.recv(STATUS_LINE_BYTES - len(received))
        except socket.timeout:
            return 599
        if not chunk:
            break
        received += chunk
    parts = received.split(b"\r\n", 1)[0].split()
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() and len(parts[1]) == 3:
        return int(parts[1])
    return 599


def probe_for(service: "Service", container: "Container") -> tuple[Optional[Probe], str]:
    """The readiness probe ``container`` needs before ``service`` routes it: ``(None,
    "")`` when none does (a Docker health check decides, or ``readiness: "none"``),
    ``(None, why)`` when it cannot be probed (no address of its own)."""
    if container.health is not None or service.readiness.kind == "none":
        return None, ""
    ip, why = service.own_address_of(container)
    if ip is None:
        return None, f"its readiness cannot be probed: it {why}"
    return Probe(container.id, ip, service.port, service.readiness.path, container.name), ""


@dataclass
class _Pending:
    """A probe not yet answered: when it started, how often it was tried."""

    started: float
    attempts: int = 0
    reported: bool = False
    #: the order number of its one live entry in the due heap
    entry: int = -1
    #: its last try took half its deadline or more (a server that trickles, or an
    #: address that does not answer): it is tried on the slow lane only
    slow: bool = False


class ReadinessProber:
    """Probes containers until they answer; remembers which did, until they go."""

    #: delay before the first retry, seconds
    initial = 0.01
    #: each later retry waits this share of the time the probe has waited so far, so a
    #: container is routed at most that share later than it answers (a doubling delay
    #: routed a server that answers 0.3 s after its start up to 40% late)
    share = 0.03
    #: the retry delay never grows past this many seconds
    cap = 0.5
    #: seconds one attempt may take (a connect to a container here is refused at once
    #: when nothing listens; only a vanished address is slow)
    attempt_timeout = 1.0
    #: threads that run probe attempts
    workers = 4
    #: of those, the ones that try only the slow probes: however many containers make
    #: every try last its whole deadline, the other workers stay free for the rest
    slow_workers = 1

    def __init__(self, on_ready: Callable[[Probe], None], report_after: float = 30.0) -> None:
        self.on_ready = on_ready
        self.report_after = report_after
        self._ready: set[Probe] = set()
        self._pending: dict[Probe, _Pending] = {}
        #: slow or not -> (due, order, probe): the next attempt of each pending probe
        #: not being tried, one heap a lane
        self._due: dict[bool, list[tuple[float, int, Probe]]] = {False: [], True: []}
        self._order = itertools.count()
        self._lock = threading.Condition()
        self._threads: list[StoppableThread] = []
        self._stopping = False
        #: containers reported as not ready so far
        self.reported_total = 0

    # -- the Registrar's side ------------------------------------------------------

    def require(self, probe: Probe) -> bool:
        """True once ``probe`` has succeeded; until then False, and the probe runs. The
        first try is a :meth:`Probe.glance`, made at once by the caller: it never waits,
        and it saves a container that already answers the trip through the pool."""
        with self._lock:
            if probe in self._ready:
                return True
            if probe in self._pending or self._stopping:
                return False
        started = time.monotonic()
        answered = probe.glance()
        with self._lock:
            if probe in self._ready:
                return True
            if probe in self._pending or self._stopping:
                return False
            if answered:
                self._ready.add(probe)
                return True
            self._pending[probe] = _Pending(started, attempts=0 if answered is None else 1)
            self._schedule(probe, 0.0 if answered is None else self.initial)
            self._start_workers()
            return False

    def forget(self, container_id: str) -> None:
        """The container stops, dies or goes: cancel its probes and forget that it was
        ready (a container that starts again must answer again)."""
        with self._lock:
            self._ready = {p for p in self._ready if p.container_id != container_id}
            for probe in [p for p in self._pending if p.container_id == container_id]:
                del self._pending[probe]

    def retain(self, container_ids: Iterable[str]) -> None:
        """Forget every container but these (the ones a listing found running)."""
        keep = set(container_ids)
        with self._lock:
            self._ready = {p for p in self._ready if p.container_id in keep}
            for probe in [p for p in self._pending if p.container_id not in keep]:
                del self._pending[probe]

    def settle(self, timeout: float) -> bool:
        """Wait (at most ``timeout``) until every pending probe has been tried once, so
        a sweep routes the containers that already answer instead of unrouting them
        until their probe comes back. False when no probe was waiting for its first
        try (nothing can have changed)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            untried = any(p.attempts == 0 for p in self._pending.values())
            while any(p.attempts == 0 for p in self._pending.values()):
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping:
                    break
                self._lock.wait(left)
            return untried

    def not_ready(self) -> list[Probe]:
        """Probes reported as not answering and still pending."""
        with self._lock:
            return sorted((p for p, s in self._pending.items() if s.reported),
                          key=lambda p: (p.container_id, p.host, p.port, p.path))

    def stop(self) -> None:
        """Stop the workers; pending probes are dropped."""
        with self._lock:
            self._stopping = True
            self._pending.clear()
            self._due = {False: [], True: []}
            threads, self._threads = self._threads, []
            self._lock.notify_all()
        for thread in threads:
            thread.stop()
        for thread in threads:
            thread.join(timeout=self.attempt_timeout + 5)

    # -- the workers ---------------------------------------------------------------------

    def _schedule(self, probe: Probe, delay: float) -> None:
        entry = next(self._order)
        state = self._pending[probe]
        state.entry = entry
        heapq.heappush(self._due[state.slow], (time.monotonic() + delay, entry, probe))
        self._lock.notify_all()

    def _start_workers(self) -> None:
        if self._threads or self._stopping:
            return
        for number in range(self.workers):
            slow = number >= self.workers - self.slow_workers
            thread = _Worker(f"warden-readiness-{number + 1}{'-slow' if slow else ''}", self, slow)
            self._threads.append(thread)
            thread.start()

    def _next(self, worker: StoppableThread) -> Optional[Probe]:
        """Block until a probe is due; None when the worker should end."""
        with self._lock:
            while not worker.stopping and not self._stopping:
                due_heap = self._due[worker.slow]
                if due_heap:
                    due, entry, probe = due_heap[0]
                    state = self._pending.get(probe)
                    if state is None or state.entry != entry:
                        heapq.heappop(due_heap)  # forgotten, or scheduled again, meanwhile
                        continue
                    wait = due - time.monotonic()
                    if wait <= 0:
                        heapq.heappop(due_heap)
                        return probe
                    self._lock.wait(wait)
                else:
                    self._lock.wait()
            return None

    def _attempt(self, probe: Probe) -> None:
        began = time.monotonic()
        answered = probe.attempt(self.attempt_timeout)
        took = time.monotonic() - began
        with self._lock:
            state = self._pending.get(probe)
            if state is None:
                return  # forgotten while it was being tried
            state.attempts += 1
            state.slow = took >= self.attempt_timeout / 2
            self._lock.notify_all()
            waited = time.monotonic() - state.started
            if answered:
                del self._pending[probe]
                self._ready.add(probe)
            else:
                if waited >= self.report_after and not state.reported:
                    state.reported = True
                    self.reported_total += 1
                    logger.warning("%s: no answer for %.0f s; it stays unrouted until it answers",
                                   probe, waited)
                self._schedule(probe, min(self.cap, max(self.initial, self.share * waited)))
                return
        if state.reported:
            logger.warning("%s: answers after %.1f s; routing it", probe, waited)
        else:
            logger.debug("%s: answers after %.3f s (%d attempts)", probe, waited, state.attempts)
        self.on_ready(probe)


class _Worker(StoppableThread):
    """One of the prober's threads: takes the next due probe and tries it."""

    def __init__(self, name: str, prober: ReadinessProber, slow: bool = False) -> None:
        super().__init__(name)
        self.prober = prober
        #: True: it tries only the probes whose last try was slow
        self.slow = slow

    def on_stop(self) -> None:
        with self.prober._lock:
            self.prober._lock.notify_all()

    def run(self) -> None:
        while True:
            probe = self.prober._next(self)
            if probe is None:
                return
            try:
                self.prober._attempt(probe)
            except Exception:  # noqa: BLE001 - one bad probe must not end the worker
                logger.exception("readiness probe %s failed", probe)
