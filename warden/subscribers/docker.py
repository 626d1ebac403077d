"""The Docker subscriber: reads the engine's event stream and turns containers into
:class:`~warden.model.Container` records.

The reader thread only reads and queues: the engine skips events for a subscriber that
lags about 100 ms, so inspecting happens on the Registrar's worker thread instead. On a
lost stream the reader reconnects with backoff, replays the gap with ``since`` and asks
for a full sweep, since the engine keeps only its last 256 events.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import queue
import re
import threading
import time
from dataclasses import replace
from datetime import datetime
from typing import Any, Optional

import docker
import docker.errors
import requests.exceptions

from warden import signals
from warden.errors import BadAnswer, ConnectionLost, ContainerGone
from warden.model import Attachment, Container, ContainerEvent, PublishedPort
from warden.runtime.threads import ConnectionLoop

logger = logging.getLogger(__name__)

#: kill signals that stop a container; any other (SIGHUP for a reload) changes nothing
STOP_SIGNALS = frozenset({"15", "9", "2", "3", "SIGTERM", "SIGKILL", "SIGINT", "SIGQUIT",
                          "TERM", "KILL", "INT", "QUIT"})

#: container actions after which Warden inspects the container again
INSPECT_ACTIONS = frozenset({"start", "unpause", "pause", "restart", "update", "rename"})

#: errors that mean the engine is unreachable rather than that a call was refused
_CONNECTION_ERRORS = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                      ConnectionError, OSError)


def _health_from_status(status: str) -> Optional[str]:
    if "(healthy)" in status:
        return "healthy"
    if "(unhealthy)" in status:
        return "unhealthy"
    if "(health: starting)" in status:
        return "starting"
    return None


def _created(text: str) -> float:
    """Inspect's ``Created`` (RFC 3339, nanoseconds) as Unix seconds, to the
    microsecond; 0 if unreadable. The listing gives whole seconds only, so every
    container's creation time comes from an inspect (see :meth:`DockerSource.running`)."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text or "")
    if not match:
        return 0.0
    fraction = (match.group(2) or ".0")[:7]
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(match.group(1) + fraction + zone).timestamp()


def container_from_inspect(data: dict) -> Container:
    """A Container from ``GET /containers/{id}/json``."""
    state = data.get("State") or {}
    config = data.get("Config") or {}
    settings = data.get("NetworkSettings") or {}
    health = (state.get("Health") or {}).get("Status") if state.get("Health") else None
    attachments = tuple(
        Attachment(name, (net or {}).get("IPAddress") or "", (net or {}).get("GlobalIPv6Address") or "")
        for name, net in sorted((settings.get("Networks") or {}).items())
    )
    ports = []
    for spec, bindings in (settings.get("Ports") or {}).items():
        port, _, proto = spec.partition("/")
        for binding in bindings or []:
            if binding.get("HostPort", "").isdigit() and port.isdigit():
                ports.append(PublishedPort(int(port), proto or "tcp", int(binding["HostPort"])))
                break
    return Container(
        id=data["Id"],
        name=(data.get("Name") or "").lstrip("/"),
        image=config.get("Image") or data.get("Image") or "",
        labels=dict(config.get("Labels") or {}),
        running=bool(state.get("Running")) and not state.get("Restarting"),
        paused=bool(state.get("Paused")),
        health=health,
        attachments=attachments,
        ports=tuple(ports),
        created=_created(data.get("Created") or ""),
    )


def container_from_summary(data: dict) -> Container:
    """A Container from one entry of ``GET /containers/json`` (one listing, no inspect)."""
    settings = data.get("NetworkSettings") or {}
    attachments = tuple(
        Attachment(name, (net or {}).get("IPAddress") or "", (net or {}).get("GlobalIPv6Address") or "")
        for name, net in sorted((settings.get("Networks") or {}).items())
    )
    ports = []
    seen = set()
    for entry in data.get("Ports") or []:
        if entry.get("PublicPort") and (entry.get("PrivatePort"), entry.get("Type")) not in seen:
            seen.add((entry.get("PrivatePort"), entry.get("Type")))
            ports.append(PublishedPort(int(entry["PrivatePort"]), entry.get("Type") or "tcp",
                                       int(entry["PublicPort"])))
    names = data.get("Names") or [""]
    state = data.get("State") or ""
    return Container(
        id=data["Id"],
        name=names[0].lstrip("/"),
        image=data.get("Image") or "",
        labels=dict(data.get("Labels") or {}),
        running=state in ("running", "paused"),
        paused=state == "paused",
        health=_health_from_status(data.get("Status") or ""),
        attachments=attachments,
        ports=tuple(ports),
        created=float(data.get("Created") or 0),
    )


def container_event(raw: dict) -> Optional[ContainerEvent]:
    """The event Warden acts on in one raw Docker event, or None for one it ignores (a
    kill with a signal that stops nothing, a network event without a container)."""
    kind = raw.get("Type")
    action = raw.get("Action") or raw.get("status") or ""
    actor = raw.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    event_time = raw.get("timeNano", 0) / 1e9 or float(raw.get("time", 0))
    if kind == "network":
        if action not in ("connect", "disconnect") or not attributes.get("container"):
            return None
        return ContainerEvent(action, attributes["container"], event_time)
    if kind != "container":
        return None
    container_id = actor.get("ID") or raw.get("id") or ""
    if action in ("kill", "stop"):
        if action == "kill" and attributes.get("signal", "").upper() not in STOP_SIGNALS:
            return None
        return ContainerEvent(action, container_id, event_time, stopping=True)
    if action in INSPECT_ACTIONS or action in ("die", "destroy", "oom") \
            or action.startswith("health_status"):
        return ContainerEvent(action, container_id, event_time)
    return None



#: where the Docker client connects when ``DOCKER_HOST`` is not set
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


def docker_address() -> str:
    """Where the Docker client connects, and why there, for messages."""
    given = os.environ.get("DOCKER_HOST")
    return f"{given} (DOCKER_HOST)" if given else f"{DEFAULT_DOCKER_HOST} (the default; DOCKER_HOST names another)"


class DockerSource:
    """Warden's reads of the Docker engine: inspect one container, list them all, and
    list the network subnets. Errors come out as Warden's own."""

    def __init__(self, client: Optional[docker.DockerClient] = None) -> None:
        self.client = client or docker.from_env(timeout=10)
        self.api = self.client.api
        #: Docker API calls made, by kind (for benchmarks and metrics)
        self.calls: dict[str, int] = {"inspect": 0, "list": 0, "networks": 0}
        #: container id -> the image reference it was created from (inspect's
        #: ``Config.Image``) and its creation time to the microsecond, which never
        #: change for a container
        self._identity: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def inspect(self, container_id: str) -> Container:
        """The container as it is now, or :class:`ContainerGone`."""
        self.calls["inspect"] += 1
        try:
            container = container_from_inspect(self.api.inspect_container(container_id))
        except docker.errors.NotFound:
            raise ContainerGone(container_id) from None
        except _CONNECTION_ERRORS as error:
            raise ConnectionLost(f"Docker: {error}") from None
        with self._lock:
            self._identity[container.id] = (container.image, container.created)
        return container

    def running(self) -> list[Container]:
        """Every running (or paused) container, from one listing, each with the image
        reference it was created from and its creation time, as an inspect gives them.

        The listing names a container's image by ID once its tag points at another
        image (a same-tag redeploy), and gives its creation time in whole seconds only
        (so two containers of one second would rank by id in a sweep and by time after
        an event): both come from the inspect cache, and a container first seen in a
        listing is inspected once."""
        self.calls["list"] += 1
        try:
            entries = self.api.containers()
        except _CONNECTION_ERRORS as error:
            raise ConnectionLost(f"Docker: {error}") from None
        try:
            listed = [container_from_summary(c) for c in entries]
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            # A listing Warden cannot read whole is no listing: taking the rest would
            # unroute the containers it could not read.
            raise BadAnswer(f"Docker's container listing cannot be read ({error!r})") from None
        with self._lock:
            known = {c.id: self._identity.get(c.id) for c in listed}
        found = []
        for container in listed:
            identity = known[container.id]
            if identity is None:
                try:
                    inspected = self.inspect(container.id)
                except ContainerGone:
                    continue
                identity = (inspected.image, inspected.created)
            found.append(replace(container, image=identity[0], created=identity[1]))
        with self._lock:
            self._identity = {c.id: (c.image, c.created) for c in found}
        return found

    def subnets(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The subnets of this host's Docker networks."""
        self.calls["networks"] += 1
        try:
            networks = self.api.networks()
        except _CONNECTION_ERRORS as error:
            raise ConnectionLost(f"Docker: {error}") from None
        found = []
        for network in networks:
            for entry in ((network.get("IPAM") or {}).get("Config") or []):
                try:
                    found.append(ipaddress.ip_network(entry.get("Subnet", ""), strict=False))
                except ValueError:
                    continue
        return tuple(found)

class DockerEventReader(ConnectionLoop):
    """Reads the Docker event stream and queues each event Warden acts on as a
    :class:`~warden.model.ContainerEvent`; never inspects or writes. After every
    reconnect it replays the gap with ``since`` and asks for a sweep
    (``sweep_requested``), since the engine keeps only its last 256 events."""

    backoff_initial = 0.5
    backoff_cap = 30.0
    what = "Docker events stream"
    #: a broken stream fails in many ways (requests, urllib3, the socket): each is a
    #: lost connection
    lost = (Exception,)

    #: the actions Warden acts on; the engine filters the rest (health-check execs,
    #: attaches, resizes) out, so a burst queues no more than it must
    actions = ("start", "restart", "kill", "stop", "die", "oom", "destroy", "pause", "unpause",
               "health_status", "update", "rename", "connect", "disconnect")

    def __init__(self, source: DockerSource, out: "queue.Queue[Any]") -> None:
        super().__init__("warden-docker-events")
        self.source = source
        self.out = out
        #: Docker's time of the last event read, for ``since`` on reconnect
        self.last_time: Optional[str] = None
        self._stream: Any = None
        self._lock = threading.Lock()

    def on_stop(self) -> None:
        with self._lock:
            stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - closing a dead stream may fail any way
                pass

    def open(self) -> Any:
        stream = self.source.api.events(
            since=self.last_time, decode=True,
            filters={"type": ["container", "network"], "event": list(self.actions)},
        )
        with self._lock:
            self._stream = stream
        return stream

    def close(self, stream: Any) -> None:
        with self._lock:
            self._stream = None
        stream.close()

    def reconnected(self) -> None:
        logger.info("Docker events stream reconnected; replaying since %s", self.last_time)
        signals.send(signals.sweep_requested, self, reason="Docker events reconnected")

    def serve(self, stream: Any) -> None:
        if self.last_time is None:
            # Replay from here on: a reconnect asks for what happened since now.
            self.last_time = f"{time.time():.9f}"
        self.held()
        for raw in stream:
            if raw.get("timeNano"):
                ns = int(raw["timeNano"])
                self.last_time = f"{ns // 10**9}.{ns % 10**9:09d}"
            event = container_event(raw)
            if event is not None:
                self.out.put(event)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("docker event %s %s %s%s", raw.get("Type"), raw.get("Action"),
                             ((raw.get("Actor") or {}).get("ID") or "")[:12],
                             "" if event else " (changes nothing)")
