"""The Registrar: keeps this host's Redx routes and load-balancer enrolment in step with
its running containers.

It owns one worker thread. Docker events, probe answers, sweep requests and service
reloads arrive on one queue as typed items and are handled there in order, so the
Registrar's view never races with itself. What should exist is worked out by two parts
with no I/O of their own: :class:`~warden.registrar.view.HostView` (containers, routes,
enrolment) and :class:`~warden.registrar.in_force.ServicesInForce` (the files' and the
labels' services). This thread inspects, lists, sweeps and emits the signals; the
handlers (Redx, ELB, yours) make it so.
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass, replace
from typing import Any, Iterable, Optional, Union

from warden import signals
from warden.config import Config
from warden.errors import BadAnswer, ConnectionLost, ContainerGone
from warden.labels import LabelPolicy
from warden.model import Change, Container, ContainerEvent, DesiredState, LoadBalancerTarget, Ownership, Route
from warden.registrar.in_force import ServicesInForce, changed
from warden.registrar.readiness import ReadinessProber, probe_for
from warden.registrar.view import HostView, Unrouted
from warden.runtime.threads import Backoff, StoppableThread
from warden.services import Service, ServiceCatalog
from warden.subscribers.docker import DockerSource

# The name operators filter logs on, kept from before the module moved.
logger = logging.getLogger("warden.registrar")


@dataclass(frozen=True)
class SweepRequest:
    """Reconcile everything now, for ``reason``."""

    reason: str


@dataclass(frozen=True)
class Reload:
    """The service catalog holds new descriptions."""


@dataclass(frozen=True)
class NewLabelPolicy:
    """SIGHUP changed the label patterns: judge the labels again under ``policy``."""

    policy: LabelPolicy


@dataclass(frozen=True)
class ProbeAnswered:
    """A container's readiness probe answered: look at its routes again."""

    container_id: str


#: what the Registrar's queue carries (and ``None``, which ends the worker)
Work = Union[ContainerEvent, ProbeAnswered, SweepRequest, Reload, NewLabelPolicy]


class Registrar(StoppableThread):
    """This host's view of its containers and the routes they should have, kept on one
    thread."""

    #: first delay before a failed sweep is tried again, in seconds; it doubles up to
    #: ``retry_cap`` (or the sweep period, when shorter)
    retry_initial = 0.5
    retry_cap = 30.0

    def __init__(self, config: Config, docker_source: DockerSource, catalog: ServiceCatalog,
                 inbox: "Optional[queue.Queue[Optional[Work]]]" = None) -> None:
        super().__init__("warden-registrar")
        self.config = config
        self.docker = docker_source
        self.catalog = catalog
        #: the worker's queue; the Docker events reader puts its events here
        self.inbox: "queue.Queue[Optional[Work]]" = inbox or queue.Queue()
        #: the services in force: the files', then those labels define
        self.in_force = ServicesInForce(catalog.services, config.label_prefix, LabelPolicy.of(config))
        #: containers whose labels were refused so far
        self.label_problems = 0
        self._service_label = config.label_prefix + "service"
        #: the containers, their routes and this instance's enrolment
        self.view = HostView(config.host_address, self._service_label)
        self.ownership = Ownership((), config.host_address)
        self.sweeps = 0
        self.last_sweep_changes: list[Change] = []
        self._warned: set[tuple[str, str]] = set()
        self._ready_wait: Any = None
        #: the last sweep succeeded (else the next one is due after a backoff delay)
        self.sweep_ok = True
        #: probes containers without a Docker health check until they answer
        self.prober = ReadinessProber(
            lambda probe: self.inbox.put(ProbeAnswered(probe.container_id)),
            config.readiness_report_seconds)
        #: backends with at least one route on this host (read by the Redx watcher from
        #: its own thread, so replaced whole, never mutated)
        self.routed_backends: frozenset[str] = frozenset()
        self.receivers = signals.Receivers(
            (signals.sweep_requested, lambda sender, *, reason, **kw: self.inbox.put(SweepRequest(reason))),
            (signals.services_reloaded, lambda sender, **kw: self.inbox.put(Reload())),
            (signals.settings_reloaded,
             lambda sender, *, config, **kw: self.inbox.put(NewLabelPolicy(LabelPolicy.of(config)))),
        )

    @property
    def services(self) -> tuple[Service, ...]:
        """The services in force."""
        return self.in_force.services

    @property
    def containers(self) -> dict[str, Container]:
        """The running containers by id."""
        return self.view.containers

    # -- the worker loop ---------------------------------------------------------

    def on_stop(self) -> None:
        self.inbox.put(None)

    def close(self) -> None:
        """Stop the readiness probes (after the worker has stopped, or after a one-off
        sweep)."""
        self.prober.stop()

    def wait_before_first_sweep(self, ready: Any) -> None:
        """The first sweep waits until ``ready`` (an Event: the Docker events stream is
        open), so a container started during start-up is never missed."""
        self._ready_wait = ready

    def run(self) -> None:
        if self._ready_wait is not None:
            while not self.stopping and not self._ready_wait.wait(0.1):
                pass
        retry = Backoff(self.retry_initial, min(self.retry_cap, self.config.registrar_sleep_time_seconds))
        self._safe_sweep("start-up")
        next_sweep = self._next_sweep(retry)
        while not self.stopping:
            try:
                work = self.inbox.get(timeout=max(0.0, next_sweep - time.monotonic()))
            except queue.Empty:
                work = SweepRequest("periodic" if self.sweep_ok else "retry")
            if work is None:
                break
            try:
                if self._handle(work):
                    next_sweep = self._next_sweep(retry)
            except Exception:  # noqa: BLE001 - one bad step must not end the Registrar
                logger.exception("registrar step %s failed", work)
        self.close()

    def _next_sweep(self, retry: Backoff) -> float:
        """When the next sweep is due: a period after one that succeeded, a backoff
        delay after one that failed (the view may be wrong until one succeeds)."""
        if self.sweep_ok:
            retry.reset()
            return time.monotonic() + self.config.registrar_sleep_time_seconds
        return time.monotonic() + retry.next_delay()

    def _handle(self, work: Work) -> bool:
        """Do one piece of work; True when it swept."""
        if isinstance(work, ContainerEvent):
            self.handle_event(work)
        elif isinstance(work, ProbeAnswered):
            self._update(work.container_id, self.view.started_at.get(work.container_id))
        elif isinstance(work, Reload):
            self.reload()
            self._safe_sweep("services changed")
            return True
        elif isinstance(work, NewLabelPolicy):
            self.in_force.policy = work.policy
            self._relabel(why="label patterns changed")
            self._safe_sweep("label patterns changed")
            return True
        elif isinstance(work, SweepRequest):
            self._handle_queued_before_sweeping()
            self._safe_sweep(work.reason)
            return True
        return False

    def _handle_queued_before_sweeping(self) -> None:
        """Several sweep requests queued together need one sweep; events and probe
        answers between them are handled first, in order."""
        held: list[Optional[Work]] = []
        while True:
            try:
                work = self.inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(work, (ContainerEvent, ProbeAnswered)):
                self._handle(work)
            elif not isinstance(work, SweepRequest):
                held.append(work)
        for work in held:
            self.inbox.put(work)

    def handle_event(self, event: ContainerEvent) -> None:
        """One Docker event: inspect the container when the event alone does not say
        enough, update the view, emit the route and enrolment changes, then notify
        ``container_changed``."""
        if event.action in ("connect", "disconnect") and event.container_id not in self.view.containers:
            # A container is connected to its networks while it starts, before it
            # runs: its start event follows and tells all. Only a running container's
            # network change needs a look.
            return
        container: Optional[Container] = None
        if event.needs_inspect:
            try:
                container = self.docker.inspect(event.container_id)
            except ContainerGone:
                event = replace(event, action="destroy")
            except ConnectionLost as error:
                logger.warning("cannot inspect after event %s: %s; a sweep will follow",
                               event.action, error)
                self.inbox.put(SweepRequest("Docker unreachable while inspecting"))
                return
        before = self.view.containers.get(event.container_id)
        if event.stopping or event.gone:
            self.prober.forget(event.container_id)
        self.view.apply(event, container)
        # Only a container with a service label can change what labels define. Such a
        # service is in force before its first route is written, and leaves only after
        # its last route is gone.
        labelled = self.config.container_labels and any(
            c is not None and self._service_label in c.labels for c in (before, container))
        standing = self.in_force.labelled.services
        if labelled:
            self._relabel(keep_gone=True)
        self._update(event.container_id, event.time)
        if labelled:
            self._relabel()
            self._update_members(changed(standing, self.in_force.labelled.services), event.container_id)
        signals.send(signals.container_changed, self, action=event.action,
                     container_id=event.container_id, container=container,
                     stopping=event.stopping, event_time=event.time)

    def _safe_sweep(self, reason: str) -> None:
        """A sweep whose failure is logged, never raised; ``sweep_ok`` says which."""
        try:
            self.sweep(reason, apply=True, wait=False)
        except ConnectionLost as error:
            logger.warning("sweep (%s) skipped: %s", reason, error)
        except Exception as error:  # noqa: BLE001 - a failed sweep is retried, never the end of the Registrar
            logger.error("sweep (%s) failed: %s", reason, error,
                         exc_info=not isinstance(error, BadAnswer))
        else:
            self.sweep_ok = True
            return
        self.sweep_ok = False

    # -- the event path ------------------------------------------------------------

    def routes_for(self, container: Container) -> frozenset[Route]:
        """The routes ``container`` should have under the current services."""
        routes, unrouted = self.view.routes_for(container, self.services, self.in_force.labelled.refused,
                                                self._ready)
        self._warn(unrouted)
        return routes

    def _warn(self, unrouted: Iterable[Unrouted]) -> None:
        """Say once per container and service why it is not routed."""
        for item in unrouted:
            container, service = item.container, item.service
            if (container.id, service.name) not in self._warned:
                self._warned.add((container.id, service.name))
                logger.warning("container %s (%s) of service %s is not routed: %s",
                               container.name, container.short_id, service.name, item.why)

    def _ready(self, container: Container, service: Service) -> tuple[bool, str]:
        """Has ``container`` shown it is ready for ``service``? A Docker health check
        decides when there is one (the view has checked it); else the service's
        readiness probe, which starts here when it has not run yet. The second value
        says why not, when worth a warning."""
        probe, why = probe_for(service, container)
        if probe is None:
            return not why, why
        return self.prober.require(probe), ""

    def _update(self, container_id: str, event_time: Optional[float]) -> None:
        """Recompute one container's routes and emit the differences."""
        diff = self.view.update(container_id, self.services, self.in_force.labelled.refused, self._ready)
        container = self.view.containers.get(container_id)
        if container is None:
            self._warned = {w for w in self._warned if w[0] != container_id}
        self._warn(diff.unrouted)
        for route in diff.removed:
            signals.send(signals.route_removed, self, route=route, container_id=container_id, event_time=event_time)
        for route in diff.added:
            signals.send(signals.route_added, self, route=route, container=container, event_time=event_time)
        self._send_enrolment(diff.enrol, diff.leave)
        for target in diff.deregister:
            signals.send(signals.container_target_changed, self, target=target, registered=False)
        for target in diff.register:
            signals.send(signals.container_target_changed, self, target=target, registered=True)
        self._update_routed()

    def _send_enrolment(self, enrol: tuple[LoadBalancerTarget, ...], leave: tuple[LoadBalancerTarget, ...]) -> None:
        for target in enrol:
            signals.send(signals.enrolment_changed, self, target=target, enrolled=True)
        for target in leave:
            signals.send(signals.enrolment_changed, self, target=target, enrolled=False)

    def _update_members(self, names: set[str], besides: str) -> None:
        """Recompute the routes of every other container of the label-defined services
        ``names``, whose definition in force just changed: one refused while another
        container's definition stood, or one that only carries the service label."""
        if not names:
            return
        for cid, container in list(self.view.containers.items()):
            if cid != besides and container.labels.get(self._service_label) in names:
                self._update(cid, None)

    def wanted_targets(self) -> set[LoadBalancerTarget]:
        """Load balancers and target groups that should hold this instance: those
        named by any service with at least one route here."""
        return self.view.wanted_targets(self.services)

    # -- sweeps and reloads ----------------------------------------------------------

    def refresh(self) -> None:
        """Rebuild the view from one Docker listing (plus the network subnets)."""
        subnets = self.docker.subnets()
        listed = {c.id: c for c in self.docker.running()}
        self.view.relist(listed)
        # What a new label-defined service may find in its keys is judged by this
        # listing's networks.
        self.ownership = Ownership(subnets, self.config.host_address, self.ownership.published_backends)
        self._relabel()
        self.prober.retain(listed)
        refused = self.in_force.labelled.refused
        self._warn(self.view.route_all(self.services, refused, self._ready))
        # Containers that already answer (every one, when Warden restarts) are routed by
        # this sweep, not unrouted until their probe comes back.
        if self.prober.settle(self.prober.attempt_timeout):
            self._warn(self.view.route_all(self.services, refused, self._ready))
        published = frozenset(s.backend_name for s in self.services if s.published_port)
        self.ownership = Ownership(subnets, self.config.host_address, published)

    def desired(self) -> DesiredState:
        """What Redis and the load balancers should hold, from the current view."""
        return self.view.desired(self.services, self.ownership)

    def sweep(self, reason: str, apply: bool = True, wait: bool = True) -> list[Change]:
        """One full reconcile: list the containers, rebuild the desired state and let
        every handler compare it with what its store really holds. Returns the changes
        made (or, with ``apply=False``, the changes that would be made)."""
        started = time.monotonic()
        self.refresh()
        desired = self.desired()
        if apply:
            self.view.enrolled = {t for t, on in desired.targets.items() if on}
        changes: list[Change] = []
        for _, result in signals.send(signals.sweep, self, desired=desired, apply=apply, wait=wait,
                                      services=self.services):
            changes.extend(result or [])
        self.sweeps += 1
        self.last_sweep_changes = changes
        self._update_routed()
        seconds = time.monotonic() - started
        logger.info("sweep (%s): %d containers, %d changes in %.3fs", reason,
                    len(self.view.containers), len(changes), seconds)
        if apply:
            signals.send(signals.sweep_done, self, reason=reason, changes=changes, seconds=seconds)
        return changes

    def reload(self) -> tuple[Service, ...]:
        """Take the services the catalog now holds (the service watcher loaded them);
        what the old services held that the new ones no longer name is retired."""
        self.in_force.file_services = self.catalog.services
        return self._relabel(why="services reloaded")

    def _relabel(self, keep_gone: bool = False, why: str = "services by labels") -> tuple[Service, ...]:
        """The services in force: the files', and those the running containers define
        by labels. ``keep_gone`` keeps a label-defined service whose containers went
        (until their routes are gone too)."""
        if self.config.container_labels:
            for problem in self.in_force.relabel(self.view.containers.values(), self._objection, keep_gone):
                self.label_problems += 1
                logger.warning("not routed: %s", problem)
        new = self.in_force.combined()
        retired = self.in_force.replace(new, self.ownership)
        if retired is not None:
            logger.info("%s: %s", why, ", ".join(s.name for s in new) or "none")
            signals.send(signals.services_changed, self, services=new, retired=retired)
            self.view.enrolled -= set(retired.targets)
        return new

    def _objection(self, service: Service) -> Optional[tuple[str, str]]:
        """Why a store refuses a new label-defined service its keys (a handler answers
        for its own store: the Redx handler when its keys hold what Warden did not
        write), as ``(label, reason)``; None when every handler lets it through."""
        ownership = self.ownership.with_service(service.backend_name, service.published_port)
        for _, answer in signals.send(signals.label_service_proposed, self, service=service,
                                      ownership=ownership):
            if answer:
                label, reason = answer
                return self.config.label_prefix + label, reason
        return None

    def _update_routed(self) -> None:
        self.routed_backends = self.view.routed_backends()
