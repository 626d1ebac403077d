"""The Scaler: decides when the leader runs a scaling pass for each service, and reads
its metric; the ECS handler does the counting and acting.

A pass runs on gaining leadership, on a ``warden:metric`` nudge, on a service file
change, and every ``managerSleepTimeSeconds``. Nudges are coalesced (at most one pass
per service a second), and passes run on a small pool of their own, so a slow service
never blocks another's pass, nor the heartbeat.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from warden import signals
from warden.config import Config
from warden.control import ControlCodec
from warden.manager.demand import Metric, MetricContext, MetricError, load_metric
from warden.policy import Policy, StepsSource
from warden.runtime.logs import Repeats
from warden.runtime.threads import StoppableThread
from warden.services import Service, ServiceCatalog

# The name operators filter logs on, kept from before the module moved.
logger = logging.getLogger("warden.scaler")

#: least seconds between two passes for one service
COALESCE_SECONDS = 1.0


class Scaler(StoppableThread):
    """Schedules scaling passes while this instance leads."""

    #: passes that may run at once (for different services)
    workers = 4
    #: seconds before the scheduler tries again after a step of its own failed
    retry_seconds = 0.5

    def __init__(self, config: Config, leadership: Any, catalog: ServiceCatalog,
                 context: MetricContext, codec: Optional[ControlCodec] = None) -> None:
        super().__init__("warden-scaler")
        self.config = config
        self.codec = codec or ControlCodec.for_config(config)
        #: the Manager's :class:`~warden.manager.manager.Leadership`: whether to act, and the fence
        self.leadership = leadership
        self.catalog = catalog
        #: a metric that stays unreadable is logged once, then once a minute with a count
        self.repeats = Repeats(logger)
        self.context = context
        self.steps_source = StepsSource(lambda: context.aws("s3"),
                                        os.path.dirname(config.path))
        self._due: dict[Optional[str], str] = {}
        self._last: dict[str, float] = {}
        self._in_flight: set[str] = set()
        self._metrics: dict[str, tuple[str, Metric]] = {}
        self._cond = threading.Condition()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="warden-scaling")
        self.receivers = signals.Receivers(
            (signals.leadership_gained, lambda sender, **kw: self.request(None, "leadership gained")),
            (signals.acting_changed,
             lambda sender, *, acting, **kw: acting and self.request(None, "replicas acknowledge again")),
            (signals.services_reloaded, lambda sender, **kw: self.request(None, "services changed")),
            (signals.aws_event, self._on_aws_event))

    # -- triggers ----------------------------------------------------------------

    def request(self, service: Optional[str], reason: str) -> None:
        """Ask for a pass for ``service`` (None: every service)."""
        with self._cond:
            self._due.setdefault(service, reason)
            self._cond.notify_all()

    def _on_aws_event(self, sender: Any, *, event: Any, **kw: Any) -> None:
        """A task that stopped unexpectedly, or an alarm of a service's metric that
        changed state: a pass for that service at once."""
        if event.kind == "task-state":
            detail = event.detail
            if detail.get("lastStatus") != "STOPPED" and detail.get("desiredStatus") != "STOPPED":
                return
            if str(detail.get("stoppedReason") or "").startswith("warden:"):
                return  # Warden stopped it on purpose
            for service in self.catalog.services:
                if service.metric and service.task_name and service.task_name == event.task_family:
                    self.request(service.name, "task stopped")
        elif event.kind == "alarm-state":
            alarm = event.detail.get("alarmName")
            for service in self.catalog.services:
                if alarm and service.metric is not None and service.metric.get("alarmname") == alarm:
                    self.request(service.name, f"alarm {alarm}")

    def on_metric_message(self, data: Any) -> None:
        """A message on ``warden:metric``, checked by the one verifier every channel
        shares (:meth:`ControlCodec.decode_metric`); raises :class:`Rejected` for one
        to ignore, which the subscriber logs and counts."""
        self.request(self.codec.decode_metric(data, frozenset(s.name for s in self.catalog.services)),
                     "metric nudge")

    # -- the loop ------------------------------------------------------------------

    def start(self) -> None:
        super().start()
        if self.leadership.is_leader:
            # It led before it listened: leadership_gained has come and gone.
            self.request(None, "leadership gained")

    def on_stop(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def run(self) -> None:
        period = self.config.manager_sleep_time_seconds
        next_periodic = time.monotonic() + period
        while not self.stopping:
            try:
                with self._cond:
                    now = time.monotonic()
                    if now >= next_periodic:
                        self._due.setdefault(None, "periodic")
                        next_periodic = now + period
                    ready = self._take_ready(now)
                    if not ready:
                        self._cond.wait(max(0.05, min(next_periodic - now, self._soonest(now))))
                        continue
                for service, reason in ready:
                    self._pool.submit(self._pass, service, reason)
            except Exception:  # noqa: BLE001 - the scheduler must outlive any one bug
                logger.exception("scaling scheduler step failed; going on")
                self.stop_event.wait(self.retry_seconds)
        self._pool.shutdown(wait=True)

    def _soonest(self, now: float) -> float:
        waits = [COALESCE_SECONDS - (now - self._last.get(name, 0.0)) for name in self._due if name]
        return min(waits, default=COALESCE_SECONDS) if self._due else 3600.0

    def _take_ready(self, now: float) -> list[tuple[Service, str]]:
        """Passes that may start now (called with the lock held)."""
        if not self._due:
            return []
        if not self.leadership.acting:
            self._due.clear()
            return []
        # One snapshot of the catalog (immutable) for this whole step.
        services = {s.name: s for s in self.catalog.services if s.metric}
        wanted: dict[str, str] = {}
        if None in self._due:
            reason = self._due.pop(None)
            wanted.update({name: reason for name in services})
        for name in list(self._due):
            if name in services:
                wanted.setdefault(name, self._due.pop(name))
            else:
                self._due.pop(name)
        ready = []
        for name, reason in wanted.items():
            if name in self._in_flight or now - self._last.get(name, -COALESCE_SECONDS) < COALESCE_SECONDS:
                self._due[name] = reason  # coalesced into the next pass
                continue
            self._in_flight.add(name)
            self._last[name] = now
            ready.append((services[name], reason))
        return ready

    def metric_of(self, service: Service) -> Metric:
        """The service's metric object, made again when its settings change."""
        spec = repr(sorted((service.metric or {}).items()))
        cached = self._metrics.get(service.name)
        if cached is None or cached[0] != spec:
            cached = (spec, load_metric(service.metric or {}, self.context))
            self._metrics[service.name] = cached
        return cached[1]

    def _pass(self, service: Service, reason: str) -> None:
        try:
            epoch = self.leadership.current_epoch()
            if epoch is None:
                return
            policy = service.scaling or Policy()
            try:
                value = self.metric_of(service).read()
                steps = self.steps_source.steps(policy.steps_url) if policy.steps_url else policy.steps
                policy.wanted(value, steps)  # unbounded (no steps, no maxTasks): hold
            except MetricError as error:
                self.repeats.failed(f"metric:{service.name}", logging.WARNING, "scaling %s holds: %s",
                                    service.name, error, extra={"service": service.name})
                signals.send(signals.metric_failed, self, service=service.name, error=str(error))
                return
            self.repeats.ended(f"metric:{service.name}", "scaling %s: its metric reads again", service.name,
                               extra={"service": service.name})
            logger.debug("scaling pass for %s (%s): metric %s", service.name, reason, value)
            # Every action of this pass is fenced with the epoch it was decided under.
            signals.send(signals.scaling_pass, self, service=service, metric=value, steps=steps,
                         epoch=epoch, fence=lambda: self.leadership.fence(epoch))
        except Exception:  # noqa: BLE001 - one service's failure never stops the others
            logger.exception("scaling pass for %s failed", service.name)
        finally:
            with self._cond:
                self._in_flight.discard(service.name)
                self._cond.notify_all()
