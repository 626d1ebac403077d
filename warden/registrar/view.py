"""This host's view of its containers and the routes they should have, with no Docker,
Redis, thread or signal of its own: the Registrar's thread feeds it what Docker said and
carries out the differences it returns.

- :meth:`HostView.apply` takes one event (and the container as inspected after it);
- :meth:`HostView.update` recomputes one container's routes under the services in force
  and returns a :class:`Diff`: the routes to add and remove (only those no other
  container here still provides) and the load balancers to enrol in or leave (a
  service's first route here enrols, its last one leaves);
- :meth:`HostView.relist` and :meth:`HostView.route_all` rebuild it from a listing;
- :meth:`HostView.desired` is what the stores should hold, for a sweep.

Whether a container has shown it is ready is asked of a function the caller passes
(the readiness probes live on their own threads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection, Iterable, Optional

from warden.model import (Container, ContainerEvent, ContainerTarget, DesiredState, LoadBalancerTarget, Ownership,
                          Route)
from warden.services import Service

#: has this container shown it is ready for this service? ``(ready, why not)``; the
#: reason is worth a warning when not empty
Ready = Callable[[Container, Service], "tuple[bool, str]"]


@dataclass(frozen=True)
class Unrouted:
    """One of ``container``'s services gives it no route, for ``why``."""

    container: Container
    service: Service
    why: str


@dataclass(frozen=True)
class Diff:
    """What one change does to the stores."""

    removed: tuple[Route, ...] = ()
    added: tuple[Route, ...] = ()
    enrol: tuple[LoadBalancerTarget, ...] = ()
    leave: tuple[LoadBalancerTarget, ...] = ()
    #: the services that gave a container no route, and why
    unrouted: tuple[Unrouted, ...] = field(default=(), compare=False)
    #: containers to register as targets of their service's group, and to deregister
    register: tuple[ContainerTarget, ...] = ()
    deregister: tuple[ContainerTarget, ...] = ()


class HostView:
    """The running containers, the routes each provides, and the load balancers this
    instance is enrolled in."""

    def __init__(self, host_address: Optional[str], service_label: str) -> None:
        self.host_address = host_address
        #: the label that names a container's service
        self.service_label = service_label
        #: running containers by id, from the last listing and the events since
        self.containers: dict[str, Container] = {}
        #: containers being stopped or killed: unrouted until they die or start again
        self.being_stopped: set[str] = set()
        #: routes each container provides
        self.routes: dict[str, frozenset[Route]] = {}
        #: load-balancer targets this instance was last told to be enrolled in
        self.enrolled: set[LoadBalancerTarget] = set()
        #: each routed container's targets (``targetMode: "container"``)
        self.members: dict[str, frozenset[ContainerTarget]] = {}
        #: container id -> Docker's time for its start event, while it may still wait
        #: for its probe (so the route's latency counts from the start)
        self.started_at: dict[str, float] = {}

    # -- a container ---------------------------------------------------------------

    def routable(self, container: Container) -> bool:
        """Running, not paused, not being stopped, and healthy if Docker checks it."""
        return (container.running and not container.paused
                and container.id not in self.being_stopped
                and container.health in (None, "healthy"))

    def routes_for(self, container: Container, services: Iterable[Service], refused: Collection[str],
                   ready: Ready) -> tuple[frozenset[Route], list[Unrouted]]:
        """The routes ``container`` should have under ``services`` (none when its
        labels were ``refused``), and the services that give it none, with why."""
        if not self.routable(container) or container.id in refused:
            return frozenset(), []
        found, unrouted = set(), []
        for service in services:
            if not service.claims(container, self.service_label):
                continue
            address, why = service.address_of(container, self.host_address)
            if address is None:
                unrouted.append(Unrouted(container, service, why))
                continue
            is_ready, why = ready(container, service)
            if is_ready:
                found.add(Route(service.backend_name, address, service.name, container.id))
            elif why:
                unrouted.append(Unrouted(container, service, why))
        return frozenset(found), unrouted

    def apply(self, event: ContainerEvent, container: Optional[Container]) -> None:
        """Take one event (and the container as inspected after it, if it was)."""
        cid = event.container_id
        if event.stopping:
            self.being_stopped.add(cid)
        elif event.gone:
            self.being_stopped.discard(cid)
            self.containers.pop(cid, None)
        if container is not None:
            if event.action in ("start", "restart"):
                self.being_stopped.discard(cid)
                self.started_at[cid] = event.time
            if container.running:
                self.containers[cid] = container
            else:
                self.containers.pop(cid, None)

    def update(self, container_id: str, services: tuple[Service, ...], refused: Collection[str],
               ready: Ready) -> Diff:
        """Recompute one container's routes; what changed for the stores."""
        container = self.containers.get(container_id)
        old = self.routes.get(container_id, frozenset())
        new, unrouted = (self.routes_for(container, services, refused, ready) if container is not None
                         else (frozenset(), []))
        if new:
            self.routes[container_id] = new
        else:
            self.routes.pop(container_id, None)
        if container is None or new:
            self.started_at.pop(container_id, None)
        removed = tuple(r for r in sorted(old - new) if not self._provided(r, container_id))
        added = tuple(r for r in sorted(new - old) if not self._provided(r, container_id))
        enrol, leave = self.enrolment(services)
        before = self.members.pop(container_id, frozenset())
        after = self._members_of(container, new, services) if container is not None else frozenset()
        if after:
            self.members[container_id] = after
        return Diff(removed, added, enrol, leave, tuple(unrouted),
                    register=tuple(sorted(after - before)), deregister=tuple(sorted(before - after)))

    @staticmethod
    def _members_of(container: Container, routes: frozenset[Route],
                    services: Iterable[Service]) -> frozenset[ContainerTarget]:
        """The targets ``container`` is, through the routed services that make each
        container a target of their group."""
        routed = {r.service for r in routes}
        found = (s.member_of(container) for s in services if s.name in routed and s.member_group)
        return frozenset(t for t in found if t is not None)

    def _provided(self, route: Route, besides: str) -> bool:
        """Another container here provides the same server."""
        return any(r.backend == route.backend and r.address == route.address
                   for cid, routes in self.routes.items() if cid != besides for r in routes)

    # -- enrolment -----------------------------------------------------------------

    def wanted_targets(self, services: Iterable[Service]) -> set[LoadBalancerTarget]:
        """Load balancers and target groups that should hold this instance: those
        named by any service with at least one route here."""
        by_name = {s.name: s for s in services}
        routed = {r.service for routes in self.routes.values() for r in routes}
        return {t for name in routed if name in by_name for t in by_name[name].targets}

    def enrolment(self, services: Iterable[Service]) -> tuple[tuple[LoadBalancerTarget, ...],
                                                                tuple[LoadBalancerTarget, ...]]:
        """The targets to enrol in and to leave now; from then on, enrolled as wanted."""
        wanted = self.wanted_targets(services)
        enrol, leave = tuple(sorted(wanted - self.enrolled)), tuple(sorted(self.enrolled - wanted))
        self.enrolled = wanted
        return enrol, leave

    # -- a listing -----------------------------------------------------------------

    def relist(self, listed: dict[str, Container]) -> None:
        """The running containers are those listed; forget what concerned the others."""
        self.containers = listed
        self.being_stopped &= set(listed)
        self.started_at = {cid: t for cid, t in self.started_at.items() if cid in listed}

    def route_all(self, services: tuple[Service, ...], refused: Collection[str], ready: Ready) -> list[Unrouted]:
        """Recompute every container's routes (after a listing), with no diff: a sweep
        compares the stores with :meth:`desired` instead."""
        routes, members, unrouted = {}, {}, []
        for container in self.containers.values():
            found, why = self.routes_for(container, services, refused, ready)
            unrouted.extend(why)
            if found:
                routes[container.id] = found
                targets = self._members_of(container, found, services)
                if targets:
                    members[container.id] = targets
        self.routes, self.members = routes, members
        return unrouted

    def desired(self, services: tuple[Service, ...], ownership: Ownership) -> DesiredState:
        """What Redis and the load balancers should hold, from this view."""
        backends: dict[str, set[str]] = {s.backend_name: set() for s in services}
        for routes in self.routes.values():
            for route in routes:
                backends.setdefault(route.backend, set()).add(route.address)
        wanted = self.wanted_targets(services)
        return DesiredState(
            frontends={s.frontend: s.backend_name for s in services if s.frontend},
            backends={name: frozenset(addrs) for name, addrs in backends.items()},
            targets={t: t in wanted for s in services for t in s.targets},
            ownership=ownership,
            members={group: frozenset(t for targets in self.members.values() for t in targets
                                      if t.group == group)
                     for group in {s.member_group for s in services if s.member_group}},
        )

    def routed_backends(self) -> frozenset[str]:
        """Backends with at least one route here."""
        return frozenset(r.backend for routes in self.routes.values() for r in routes)
