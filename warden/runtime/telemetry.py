"""Prometheus ``/metrics``, and ``/livez``, ``/readyz`` and ``/healthz`` on
``metricsAddress``.

The metrics are fed by signals, so nothing in the event path knows they exist.

- ``/livez`` (and its alias ``/healthz``): is this process still doing its job? Every
  worker thread started is alive (or was asked to stop), and the last sweep is younger
  than 3 sweep periods. 503 means restart it. An outage of the Redx Redis or of the
  central Redis never fails it: Warden rides those out itself, and a fleet-wide
  restart for a central outage would help nothing.
- ``/readyz``: can it reach what it depends on? Docker, the Redx Redis, the central
  Redis, each named in the JSON body.

Both answer ``HEAD`` too.
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

from prometheus_client import (GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Counter,
                               Gauge, Histogram)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from warden import __version__, signals
from warden.config import parse_listen_address

# The name operators filter logs on, kept from before the module moved.
logger = logging.getLogger("warden.telemetry")

#: route latency buckets, seconds: Warden's routes land in milliseconds
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Telemetry:
    """The metrics registry, the signal receivers that feed it, and the HTTP server."""

    def __init__(self, address: str) -> None:
        #: ``(host, port)``; ValueError for an address that is not ``host:port``
        self.address = parse_listen_address(address)
        self.registry = CollectorRegistry()
        r = self.registry
        self.route_latency = Histogram(
            "warden_event_route_latency_seconds",
            "Docker event time to the route written in the Redx Redis", registry=r,
            buckets=LATENCY_BUCKETS)
        self.events = Counter("warden_docker_events_total", "Docker events acted on, by action",
                              ["action"], registry=r)
        self.sweeps = Counter("warden_sweeps_total", "Sweeps run", registry=r)
        self.drift = Counter("warden_sweep_drift_corrected_total",
                             "Changes sweeps made: drift the event path had not corrected", registry=r)
        self.route_changes = Counter("warden_changes_total",
                                     "Changes made to routes and enrolment, by op (add, remove) and "
                                     "store (frontend, backend, elb, targetgroup)", ["op", "store"], registry=r)
        self.aws_errors = Counter("warden_aws_errors_total",
                                  "Failed AWS calls, by service, operation and error code",
                                  ["service", "operation", "code"], registry=r)
        self.aws_events = Counter("warden_aws_events_total", "AWS events received, by kind", ["kind"],
                                  registry=r)
        self.aws_events_refused = Counter(
            "warden_aws_events_refused_total",
            "AWS events refused, by reason (wrong_source, wrong_account, wrong_region, not_confirmed)",
            ["reason"], registry=r)
        self.metric_failures = Counter("warden_metric_failures_total",
                                       "Demand metrics (or their steps) that could not be read, by service",
                                       ["service"], registry=r)
        self.scaling_failures = Counter("warden_scaling_failures_total",
                                        "Scaling passes whose ECS calls failed, by service", ["service"],
                                        registry=r)
        Gauge("warden_build_info", "Always 1; the version of Warden running", ["version"],
              registry=r).labels(__version__).set(1)
        # The standard process, platform and garbage collector metrics, on this registry.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.rejected = Counter("warden_control_messages_rejected_total",
                                "Control messages ignored, by reason", ["reason"], registry=r)
        self.leader = Gauge("warden_leader", "1 while this instance leads", registry=r)
        self.epoch = Gauge("warden_epoch", "The epoch this instance leads under (0 when not leading)",
                           registry=r)
        self.desired = Gauge("warden_tasks_desired", "Tasks desired by the last pass", ["service"], registry=r)
        self.running = Gauge("warden_tasks_running", "Tasks running after the last pass", ["service"], registry=r)
        self.redx_key_errors = Counter("warden_redx_key_errors_total",
                                       "Redx keys that could not be read or written (their service "
                                       "skipped)", registry=r)
        self._counter_sources: dict[str, tuple[str, Callable[[], int]]] = {}
        self._reconnect_sources: dict[str, Callable[[], int]] = {}
        self._dependencies: dict[str, Callable[[], bool]] = {}
        self._why: dict[str, Callable[[], str]] = {}
        r.register(_ReadAtScrape(self))
        self._threads: dict[str, Callable[[], bool]] = {}
        #: the sweep period, once a Registrar runs here: /livez then watches the sweeps
        self._sweep_period: float = 0.0
        self._last_sweep = time.monotonic()
        #: served only by a process that sweeps (see :meth:`watch_sweeps`): a manager-only
        #: process never does, and a 0 there would read as sweeps stopped for ever
        self.last_sweep_timestamp: Optional[Gauge] = None
        self._server: Any = None
        self._thread: Any = None
        self.receivers = signals.Receivers(
            (signals.route_added, self._on_route_added),
            (signals.container_changed, self._on_container_changed),
            (signals.sweep_done, self._on_sweep_done),
            (signals.change_made, self._on_change_made),
            (signals.aws_call_failed, self._on_aws_call_failed),
            (signals.aws_event, lambda sender, *, event, **kw: self.aws_events.labels(event.kind).inc()),
            (signals.aws_event_refused,
             lambda sender, *, reason, **kw: self.aws_events_refused.labels(reason).inc()),
            (signals.metric_failed, lambda sender, *, service, **kw: self.metric_failures.labels(service).inc()),
            (signals.scaling_failed, lambda sender, *, service, **kw: self.scaling_failures.labels(service).inc()),
            (signals.control_rejected, self._on_control_rejected),
            (signals.leadership_gained, self._on_leadership_gained),
            (signals.leadership_lost, self._on_leadership_lost),
            (signals.scaling_checked, self._on_scaling_checked),
            (signals.redx_key_failed, lambda sender, **kw: self.redx_key_errors.inc()),
        )

    # -- wiring ------------------------------------------------------------------

    def dependency(self, name: str, check: Callable[[], bool],
                   why: Optional[Callable[[], str]] = None) -> None:
        """``/readyz`` is 200 only while every dependency's check returns True; ``why``
        says, for ``/readyz``, what is wrong while it does not."""
        self._dependencies[name] = check
        if why is not None:
            self._why[name] = why

    def watch_sweeps(self, period: float) -> None:
        """A Registrar runs here: ``/livez`` fails once no sweep has completed for 3
        ``period``s, and ``warden_last_sweep_timestamp_seconds`` is served."""
        self._sweep_period = period
        self._last_sweep = time.monotonic()
        if self.last_sweep_timestamp is None:
            self.last_sweep_timestamp = Gauge("warden_last_sweep_timestamp_seconds",
                                              "Unix time of the last completed sweep", registry=self.registry)

    def reconnect_source(self, name: str, count: Callable[[], int]) -> None:
        """A subscriber's reconnect counter, read at each scrape."""
        self._reconnect_sources[name] = count

    def thread_check(self, thread: Any) -> None:
        """``/livez`` fails, naming ``thread``, once it has died without being asked
        to stop (a worker that ended on a bug does nothing more)."""
        self._threads[thread.name] = lambda: (
            thread.ident is None or thread.is_alive() or bool(getattr(thread, "stopping", False)))

    def counter_source(self, name: str, documentation: str, count: Callable[[], int]) -> None:
        """A counter kept by a part of Warden itself (``name`` without ``_total``),
        read at each scrape. The first part to register a name keeps it (under ``warden
        run`` the Registrar and the Manager both offer the service-file errors)."""
        self._counter_sources.setdefault(name, (documentation, count))

    def gauge_source(self, name: str, documentation: str, value: Callable[[], float]) -> None:
        """A gauge read from a part of Warden at each scrape."""
        Gauge(name, documentation, registry=self.registry).set_function(value)

    def liveness(self) -> tuple[bool, dict]:
        """Whether every worker thread lives and the sweeps go on, and the JSON body."""
        threads = {name: check() for name, check in self._threads.items()}
        body: dict[str, Any] = {"threads": threads}
        ok = all(threads.values())
        if self._sweep_period:
            age, limit = time.monotonic() - self._last_sweep, 3 * self._sweep_period
            body["sweep"] = {"ageSeconds": round(age, 3), "limitSeconds": limit}
            ok = ok and age < limit
        body["live"] = ok
        return ok, body

    def readiness(self) -> tuple[bool, dict]:
        """Whether every dependency answers, and the JSON body naming each."""
        answers = {}
        for name, check in self._dependencies.items():
            try:
                answers[name] = bool(check())
            except Exception:  # noqa: BLE001 - a failing check is a dependency not reached
                answers[name] = False
        ok = all(answers.values())
        body: dict = {"ready": ok, "dependencies": answers}
        why = {name: self._why[name]() for name, up in answers.items() if not up and name in self._why}
        if why:
            body["why"] = why
        return ok, body

    def start(self) -> None:
        self.receivers.connect()
        telemetry = self

        class Handler(BaseHTTPRequestHandler):
            #: seconds one read or write may wait
            timeout = _Server.io_seconds

            def setup(self) -> None:
                super().setup()
                # One deadline for the whole connection: a client that sends a byte
                # now and then is cut off, whatever each read waited.
                self._deadline = threading.Timer(_Server.connection_seconds, self._expire)
                self._deadline.daemon = True
                self._deadline.start()
                self.rfile = _Capped(self.rfile, _Server.request_bytes)  # type: ignore[assignment]

            def _expire(self) -> None:
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def finish(self) -> None:
                self._deadline.cancel()
                try:
                    super().finish()
                except OSError:
                    pass

            def answer(self) -> tuple[int, str, bytes]:
                path = self.path.split("?")[0]
                if path == "/metrics":
                    # The Prometheus text format, or OpenMetrics when the scraper asks.
                    encode, kind = choose_encoder(self.headers.get("Accept", ""))
                    return 200, kind, encode(telemetry.registry)
                if path in ("/livez", "/healthz", "/readyz"):
                    ok, body = telemetry.readiness() if path == "/readyz" else telemetry.liveness()
                    return (200 if ok else 503), "application/json", json.dumps(body).encode()
                return 404, "text/plain", b"not found\n"

            def respond(self, with_body: bool) -> None:
                status, kind, body = self.answer()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                if "gzip" in self.headers.get("Accept-Encoding", ""):
                    body = gzip.compress(body)
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_GET(self) -> None:
                self.respond(with_body=True)

            def do_HEAD(self) -> None:
                self.respond(with_body=False)

            def log_message(self, *args: Any) -> None:
                pass

        server_class = _Ipv6Server if ":" in self.address[0] else _Server
        self._server = server_class(self.address, Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="warden-metrics",
                                        daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        logger.info("metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
        self.receivers.disconnect()

    # -- receivers -------------------------------------------------------------------

    def _on_route_added(self, sender: Any, *, event_time: Any = None, **kw: Any) -> None:
        if event_time:
            self.route_latency.observe(max(0.0, time.time() - event_time))

    def _on_container_changed(self, sender: Any, *, action: str, **kw: Any) -> None:
        self.events.labels(action.split(":")[0]).inc()

    def _on_sweep_done(self, sender: Any, *, changes: list, **kw: Any) -> None:
        self._last_sweep = time.monotonic()
        if self.last_sweep_timestamp is not None:
            self.last_sweep_timestamp.set(time.time())
        self.sweeps.inc()
        self.drift.inc(len(changes))

    def _on_change_made(self, sender: Any, *, change: Any, **kw: Any) -> None:
        self.route_changes.labels("add" if change.op == "+" else "remove", change.text.split(":", 1)[0]).inc()

    def _on_aws_call_failed(self, sender: Any, *, service: str, operation: str, code: str, **kw: Any) -> None:
        self.aws_errors.labels(service, operation, code).inc()

    def _on_control_rejected(self, sender: Any, *, reason: str, **kw: Any) -> None:
        self.rejected.labels(reason).inc()

    def _on_leadership_gained(self, sender: Any, *, epoch: int, **kw: Any) -> None:
        self.leader.set(1)
        self.epoch.set(epoch)

    def _on_leadership_lost(self, sender: Any, **kw: Any) -> None:
        self.leader.set(0)
        self.epoch.set(0)

    def _on_scaling_checked(self, sender: Any, *, service: str, desired: int, running: int, **kw: Any) -> None:
        self.desired.labels(service).set(desired)
        self.running.labels(service).set(running)


class _ReadAtScrape:
    """A collector for what is read from Warden's parts at each scrape: the counters
    they keep themselves, the subscribers' reconnect counts, and whether each
    dependency answers."""

    def __init__(self, telemetry: "Telemetry") -> None:
        self.telemetry = telemetry

    def collect(self) -> Any:
        for name, (documentation, count) in list(self.telemetry._counter_sources.items()):
            yield CounterMetricFamily(name, documentation, value=count())
        family = CounterMetricFamily("warden_reconnects", "Reconnects of each subscriber since start",
                                     labels=["subscriber"])
        for name, count in list(self.telemetry._reconnect_sources.items()):
            family.add_metric([name], count())
        yield family
        _, answers = self.telemetry.readiness()
        up = GaugeMetricFamily("warden_dependency_up", "1 while the dependency answers (as /readyz says)",
                               labels=["dependency"])
        for name, ok in answers["dependencies"].items():
            up.add_metric([name], 1 if ok else 0)
        yield up


class _Capped:
    """A request's input, cut off after ``limit`` bytes (the request line and headers of
    a GET need far fewer): the rest reads as the end of the request."""

    def __init__(self, raw: Any, limit: int) -> None:
        self.raw = raw
        self.left = limit

    def _take(self, read: Callable[[int], bytes], size: int) -> bytes:
        if self.left <= 0:
            return b""
        data = read(self.left if size < 0 else min(size, self.left))
        self.left -= len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        return self._take(self.raw.readline, size)

    def read(self, size: int = -1) -> bytes:
        return self._take(self.raw.read, size)

    def close(self) -> None:
        self.raw.close()


class _Server(ThreadingHTTPServer):
    """The metrics and health server, bounded so a client can never starve the
    daemon: at most :attr:`max_connections` at a time (a connection past them is closed
    at once, so its descriptor is freed), each within :attr:`connection_seconds` and
    :attr:`request_bytes`."""

    #: connections served at once; the rest are closed as they come
    max_connections = 16
    #: seconds one connection may last, request and answer together
    connection_seconds = 5.0
    #: seconds one read or write may wait
    io_seconds = 2.0
    #: bytes of request (line and headers) read at most
    request_bytes = 16 * 1024

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._active = 0
        self._count = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._count:
            if self._active >= self.max_connections:
                self.shutdown_request(request)
                return
            self._active += 1
        try:
            super().process_request(request, client_address)
        except Exception:
            with self._count:
                self._active -= 1
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._count:
                self._active -= 1


class _Ipv6Server(_Server):
    """``metricsAddress`` with an IPv6 host (``[::1]:9723``)."""

    address_family = socket.AF_INET6
