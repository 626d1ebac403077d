"""Prometheus ``/metrics`` and ``/healthz`` on ``metricsAddress``.

The metrics are fed by signals, so nothing in the event path knows they exist.
``/healthz`` answers 200 only while every subscriber is connected (the Docker events
stream and the Redx Redis for the Registrar, the control channels for the Manager),
and 503 naming the ones that are not.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from warden import signals

logger = logging.getLogger(__name__)

#: route latency buckets, seconds: Warden's routes land in milliseconds
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Telemetry:
    """The metrics registry, the signal receivers that feed it, and the HTTP server."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.address = (host or "127.0.0.1", int(port))
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
        self.route_changes = Counter("warden_changes_total", "Changes made to routes and enrolment",
                                     ["op"], registry=r)
        self.aws_errors = Counter("warden_aws_errors_total", "Failed AWS calls by API", ["api"], registry=r)
        self.rejected = Counter("warden_control_messages_rejected_total",
                                "Control messages ignored, by reason", ["reason"], registry=r)
        self.leader = Gauge("warden_leader", "1 while this instance leads", registry=r)
        self.epoch = Gauge("warden_epoch", "The epoch this instance leads under (0 when not leading)",
                           registry=r)
        self.desired = Gauge("warden_tasks_desired", "Tasks desired by the last pass", ["service"], registry=r)
        self.running = Gauge("warden_tasks_running", "Tasks running after the last pass", ["service"], registry=r)
        self.reconnects = Gauge("warden_reconnects", "Reconnects of each subscriber since start",
                                ["subscriber"], registry=r)
        self.redx_key_errors = Counter("warden_redx_key_errors_total",
                                       "Redx keys that could not be read or written (their service "
                                       "skipped)", registry=r)
        self._counter_sources: dict[str, tuple[str, Callable[[], int]]] = {}
        r.register(_CounterSources(self._counter_sources))
        self._reconnect_sources: dict[str, Callable[[], int]] = {}
        self._health: dict[str, Callable[[], bool]] = {}
        self._threads: dict[str, Callable[[], bool]] = {}
        self._server: Any = None
        self._thread: Any = None
        self.receivers = signals.Receivers(
            (signals.route_added, self._on_route_added),
            (signals.container_changed, self._on_container_changed),
            (signals.sweep_done, self._on_sweep_done),
            (signals.change_made, self._on_change_made),
            (signals.aws_call_failed, self._on_aws_call_failed),
            (signals.control_rejected, self._on_control_rejected),
            (signals.leadership_gained, self._on_leadership_gained),
            (signals.leadership_lost, self._on_leadership_lost),
            (signals.scaling_checked, self._on_scaling_checked),
            (signals.redx_key_failed, lambda sender, **kw: self.redx_key_errors.inc()),
        )

    # -- wiring ------------------------------------------------------------------

    def health_check(self, name: str, check: Callable[[], bool]) -> None:
        """``/healthz`` is 200 only while every check returns True."""
        self._health[name] = check

    def reconnect_source(self, name: str, count: Callable[[], int]) -> None:
        """A subscriber's reconnect counter, read at each scrape."""
        self._reconnect_sources[name] = count

    def thread_check(self, thread: Any) -> None:
        """``/healthz`` fails, naming ``thread``, once it has died without being asked
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

    def health(self) -> tuple[bool, dict[str, bool], dict[str, bool]]:
        """Each subscriber's and each worker thread's answer, and whether all pass."""
        answers = {}
        for name, check in self._health.items():
            try:
                answers[name] = bool(check())
            except Exception:  # noqa: BLE001 - a failing check is an unhealthy one
                answers[name] = False
        threads = {name: check() for name, check in self._threads.items()}
        return all(answers.values()) and all(threads.values()), answers, threads

    def start(self) -> None:
        self.receivers.connect()
        telemetry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/metrics":
                    for name, count in telemetry._reconnect_sources.items():
                        telemetry.reconnects.labels(name).set(count())
                    body, status, kind = generate_latest(telemetry.registry), 200, CONTENT_TYPE_LATEST
                elif self.path.split("?")[0] == "/healthz":
                    ok, answers, threads = telemetry.health()
                    body = json.dumps({"ok": ok, "subscribers": answers, "threads": threads}).encode()
                    status, kind = (200 if ok else 503), "application/json"
                else:
                    body, status, kind = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(self.address, Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="warden-metrics",
                                        daemon=True)
        self._thread.start()
        logger.info("metrics on http://%s:%d/metrics", *self._server.server_address[:2])

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
        self.sweeps.inc()
        self.drift.inc(len(changes))

    def _on_change_made(self, sender: Any, *, change: Any, **kw: Any) -> None:
        self.route_changes.labels(change.op).inc()

    def _on_aws_call_failed(self, sender: Any, *, api: str, **kw: Any) -> None:
        self.aws_errors.labels(api).inc()

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


class _CounterSources:
    """A collector for counters that Warden's parts keep themselves."""

    def __init__(self, sources: dict[str, tuple[str, Callable[[], int]]]) -> None:
        self.sources = sources

    def collect(self) -> Any:
        for name, (documentation, count) in list(self.sources.items()):
            yield CounterMetricFamily(name, documentation, value=count())
