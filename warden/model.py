"""Frozen records that flow from the subscribers to the handlers.

Raw payloads (Docker's JSON, Redis replies) become these at the edge; handlers never
see a Docker or Redis dict.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Optional


@dataclass(frozen=True)
class Attachment:
    """A container's place on one Docker network."""

    network: str
    ipv4: str = ""
    ipv6: str = ""


@dataclass(frozen=True)
class PublishedPort:
    """A container port published on the host."""

    container_port: int
    protocol: str
    host_port: int


@dataclass(frozen=True)
class Container:
    """What Warden needs to know about one container, from a listing or an inspect."""

    id: str
    name: str
    image: str
    labels: Mapping[str, str] = field(default_factory=dict)
    running: bool = True
    paused: bool = False
    #: ``None`` when the container has no health check, else Docker's word for it
    health: Optional[str] = None
    attachments: tuple[Attachment, ...] = ()
    ports: tuple[PublishedPort, ...] = ()
    #: when it was created, Unix seconds to the microsecond from inspect (0 when
    #: unknown), in a sweep as after an event: the first of several containers that
    #: define one service by labels (ties by id) is the one whose definition stands
    created: float = 0.0

    @property
    def short_id(self) -> str:
        """The 12-character id that ``docker ps`` shows."""
        return self.id[:12]

    def attachment(self, network: str) -> Optional[Attachment]:
        """The attachment to ``network``, if the container has one."""
        for att in self.attachments:
            if att.network == network:
                return att
        return None

    def host_port(self, port: int, protocol: str = "tcp") -> Optional[int]:
        """The host port published for ``port``, if any."""
        for published in self.ports:
            if published.container_port == port and published.protocol == protocol:
                return published.host_port
        return None

    def __hash__(self) -> int:  # labels is a dict, so hash by identity of the id
        return hash(self.id)


@dataclass(frozen=True)
class ContainerEvent:
    """One Docker event about a container, as read from the stream: what happened, to
    which container, when. Network ``connect``/``disconnect`` events are about the
    container they name."""

    action: str
    container_id: str
    #: Docker's time of the event, float seconds
    time: float
    #: a ``stop``, or a ``kill`` with a signal that stops the container
    stopping: bool = False

    @property
    def gone(self) -> bool:
        """The container died or was removed: nothing left to inspect."""
        return self.action in ("die", "destroy", "oom")

    @property
    def needs_inspect(self) -> bool:
        """Only a fresh inspect tells what the event changed (its state, health,
        networks)."""
        return not (self.stopping or self.gone)


@dataclass(frozen=True, order=True)
class Route:
    """One ``ip:port`` server in one Redx backend, and the container behind it."""

    backend: str
    address: str
    service: str
    container_id: str = field(compare=False, default="")


@dataclass(frozen=True, order=True)
class LoadBalancerTarget:
    """Where this instance is enrolled: a classic ELB, or an ELBv2 target group and port."""

    kind: str  # "elb" or "targetgroup"
    name: str  # load balancer name, or target group ARN
    port: int = 0

    def change_text(self, instance_id: str) -> str:
        """The form used in change lines: ``elb:<name> <id>`` or
        ``targetgroup:<arn> <id>:<port>``."""
        if self.kind == "elb":
            return f"elb:{self.name} {instance_id}"
        return f"targetgroup:{self.name} {instance_id}:{self.port}"


@dataclass(frozen=True, order=True)
class ContainerTarget:
    """One container as a target of its service's target group (``targetMode:
    "container"``). Which address AWS is given depends on the group's target type,
    which only the ELB handler reads: :meth:`aws_target`."""

    group: str  # target group ARN
    container_id: str
    #: the container's own address on the service's network ("" when it has none)
    ip: str
    #: the service's port, inside the container
    port: int
    #: the host port published for ``port`` (0: not published)
    host_port: int = 0
    service: str = field(compare=False, default="")

    def aws_target(self, target_type: str, instance_id: str) -> tuple[Optional[tuple[str, int]], str]:
        """``(Id, Port)`` in a group of ``target_type`` (``instance``: this instance on
        the host port; ``ip``: the container's own address and port), or ``(None, why
        not)``."""
        if target_type == "instance":
            if not self.host_port:
                return None, (f"port {self.port} is not published on the host, and target group "
                              f"{self.group} takes instances (instanceId:hostPort)")
            if not instance_id:
                return None, "this host's instanceId is unknown (set instanceId or WARDEN_INSTANCE_ID)"
            return (instance_id, self.host_port), ""
        if target_type == "ip":
            if not self.ip:
                return None, "the container has no address on the service's network"
            return (self.ip, self.port), ""
        return None, (f"target group {self.group} takes targets of type {target_type!r}; "
                      f"targetMode \"container\" needs an instance or ip group")


@dataclass(frozen=True)
class Change:
    """One change that a sweep or an event makes, printed as SPEC's change line."""

    op: str  # "+" or "-"
    text: str  # e.g. "backend:image-server 172.17.0.2:8080"

    def __str__(self) -> str:
        return f"{self.op} {self.text}"


@dataclass(frozen=True)
class DesiredState:
    """What this host should hold, rebuilt from one Docker listing."""

    #: frontend key (without the ``frontend:`` prefix) -> backend name
    frontends: Mapping[str, str]
    #: backend name -> addresses that should be servers in it
    backends: Mapping[str, frozenset[str]]
    #: every load-balancer target a configured service names -> enrolled or not
    targets: Mapping[LoadBalancerTarget, bool]
    #: which addresses Warden owns (may add and remove) in each backend
    ownership: "Ownership"
    #: target group -> the containers here that should be its targets, for every group
    #: a service in force names with ``targetMode: "container"``
    members: Mapping[str, frozenset[ContainerTarget]] = field(default_factory=dict)


def frontends_by_backend(pairs: Iterable[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    """backend -> its frontends in the order of ``pairs`` (``(frontend, backend)`` each):
    what a proxy's handler puts in place with a backend's first server and takes away
    with its last."""
    grouped: dict[str, list[str]] = {}
    for frontend, backend in pairs:
        grouped.setdefault(backend, []).append(frontend)
    return {backend: tuple(frontends) for backend, frontends in grouped.items()}


@dataclass(frozen=True)
class Ownership:
    """The rule that decides which servers in a backend hash are Warden's to change:
    addresses inside this host's Docker network subnets, and ``hostAddress:<port>`` for
    services routed by published port."""

    subnets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    host_address: str
    #: backends that hold at least one published-port service
    published_backends: frozenset[str] = frozenset()

    def with_service(self, backend: str, published_port: bool) -> "Ownership":
        """The rule once a service on ``backend`` is in force too: a published-port one
        owns ``hostAddress:<port>`` in its backend."""
        if not published_port or backend in self.published_backends:
            return self
        return replace(self, published_backends=self.published_backends | {backend})

    def owns(self, backend: str, address: str) -> bool:
        """True when ``address`` (``ip:port`` or ``[ip]:port``) is Warden's to manage."""
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            return False
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if backend in self.published_backends and host == self.host_address:
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip.version == net.version and ip in net for net in self.subnets)
