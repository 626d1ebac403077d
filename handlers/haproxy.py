"""The HAProxy handler: this host's routes as servers of HAProxy backends and entries of
a map, through HAProxy's runtime API (no reload, no file rewritten under HAProxy).

Config: ``"haproxy": {"runtimeApi": "/run/haproxy/admin.sock" (or "host:port"), "map":
"/etc/haproxy/warden.map"}``. Each service's ``backendName`` is a backend that
``haproxy.cfg`` declares (HAProxy 2.4 or later adds servers to it at run time).

- A ready container's address becomes a server of its backend (``add server``, then
  ``enable server``), named ``warden-`` and its address (``warden-172.17.0.5-8080``), so
  a sweep knows Warden's servers from any other; at the container's ``kill``/``stop``
  it is set to ``maint`` (no new request reaches it, those in flight finish), and it is
  deleted after its ``die`` (HAProxy refuses while connections remain: the next sweep
  deletes it).
- A frontend (``loadBalancerUrl`` and ``site``) is an entry of the map: the key is the
  host and the path prefix (``web.example.com/``, ``web.example.com/api``), the value
  the backend. An entry exists only while its backend has a server that takes
  requests, so an empty service falls through to ``default_backend``.
- A sweep reads ``show servers state`` and ``show map`` and changes only Warden's
  servers and the entries of the services' own frontends; an entry that names another
  backend was not written by Warden and stays.

Every call goes through one worker thread: a runtime API that hangs holds up neither
the Registrar nor the other handlers. When HAProxy does not answer, the work waits;
when it answers again (or restarted, with none of Warden's servers), a sweep puts
everything back.
"""

from __future__ import annotations

import logging
import queue
import re
import socket
import time
from dataclasses import dataclass, replace
from typing import Any, Optional

from warden import signals
from warden.config import Config
from warden.handlers import Handler
from warden.model import Change, DesiredState, Route, frontends_by_backend
from warden.runtime.logs import Repeats
from warden.runtime.threads import Backoff, StoppableThread

logger = logging.getLogger(__name__)

#: what Warden's server names start with
PREFIX = "warden-"
#: seconds one runtime API command may take
TIMEOUT = 2.0
#: the first HAProxy whose runtime API adds servers (``add server``)
MIN_VERSION = (2, 4)
#: bits of ``srv_admin_state`` that keep a server from taking requests (forced and
#: inherited maintenance, and draining)
_NOT_TAKING = 0x01 | 0x02 | 0x04 | 0x20 | 0x08 | 0x10


class RuntimeApiError(Exception):
    """HAProxy refused a command, or did not answer."""


def missing_map(path: str) -> RuntimeApiError:
    """The error for a map haproxy.cfg does not use (one text: it is said once)."""
    return RuntimeApiError(f"HAProxy has not loaded the map {path}: haproxy.cfg must use it "
                           f"(map_beg({path})); frontends wait, servers go on")


def missing_backend(backend: str) -> RuntimeApiError:
    """The error for a backend haproxy.cfg does not declare (one text: it is said once)."""
    return RuntimeApiError(f"HAProxy has no backend {backend!r}: declare it in haproxy.cfg "
                           f"(backend {backend}); its routes wait")


def version_of(info: str) -> Optional[tuple[int, int]]:
    """HAProxy's major and minor version from ``show info`` (``Version: 2.6.12-1``)."""
    for line in info.splitlines():
        if line.startswith("Version:"):
            found = re.match(r"\s*(\d+)\.(\d+)", line.split(":", 1)[1])
            return (int(found.group(1)), int(found.group(2))) if found else None
    return None


def too_old(info: str, address: str) -> Optional[RuntimeApiError]:
    """The error for an HAProxy older than :data:`MIN_VERSION`, or None."""
    version = version_of(info)
    if version is None or version >= MIN_VERSION:
        return None
    return RuntimeApiError(f"HAProxy {version[0]}.{version[1]} at {address} cannot add servers at run time "
                           f"(add server came in 2.4); routes wait for a newer HAProxy")


#: what ends a runtime-API word or command, or escapes one: whitespace, ``;`` (the
#: command separator), ``\``, quotes, ``#`` and control characters
_SEPARATORS = re.compile(r"[\s;\\'\"#\x00-\x1f\x7f]")


def argument(text: str) -> str:
    """``text`` as one runtime-API argument, or :class:`RuntimeApiError` (nothing sent)
    when it is empty or holds a separator: a name can never become a command."""
    if not text or _SEPARATORS.search(text):
        raise RuntimeApiError(f"refused to send {text!r} to HAProxy: a runtime API argument holds no "
                              f"space, ';', '\\', quote, '#' or control character")
    return text


def server_name(address: str) -> str:
    """Warden's name for the server at ``address`` (``ip:port`` or ``[v6]:port``)."""
    return PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "-", address.replace("[", "").replace("]", "")).replace(":", "-")


def map_key(frontend: str) -> str:
    """The map's key for a frontend (``host`` and an optional path): the host, then the
    path, ``/`` when there is none, so ``web.example.com`` does not take
    ``web.example.com.other.net``."""
    host, slash, path = frontend.partition("/")
    return f"{host.lower()}/{path}" if slash else f"{host.lower()}/"


@dataclass(frozen=True)
class Server:
    """One server of a backend, as ``show servers state`` gives it."""

    backend: str
    name: str
    address: str
    admin_state: int

    @property
    def taking(self) -> bool:
        return not self.admin_state & _NOT_TAKING


class RuntimeApi:
    """HAProxy's runtime API over a UNIX socket or ``host:port``: one connection per
    command (what the socket does with ``stats socket`` in its default mode)."""

    def __init__(self, address: str) -> None:
        self.address = address

    def __call__(self, command: str) -> str:
        family = socket.AF_UNIX if "/" in self.address else socket.AF_INET
        target: Any = self.address
        if family == socket.AF_INET:
            host, _, port = self.address.rpartition(":")
            target = (host or "127.0.0.1", int(port))
        try:
            with socket.socket(family, socket.SOCK_STREAM) as conn:
                conn.settimeout(TIMEOUT)
                conn.connect(target)
                conn.sendall(command.encode() + b"\n")
                chunks = []
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except (OSError, ValueError) as error:
            raise RuntimeApiError(f"HAProxy runtime API {self.address} does not answer: {error}") from None
        return b"".join(chunks).decode(errors="replace")

    def send(self, verb: str, *args: str) -> str:
        """One command built from a fixed ``verb`` and ``args``, each checked by
        :func:`argument`: no argument can end the command or start another."""
        return self(" ".join((verb,) + tuple(argument(a) for a in args)))

    def servers(self) -> list[Server]:
        """Every server of every backend (``show servers state``)."""
        found = []
        for line in self("show servers state").splitlines():
            fields = line.split()
            if len(fields) < 19 or line.startswith("#"):
                continue
            # be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ... srv_port (19th)
            address, port = fields[4], fields[18]
            found.append(Server(fields[1], fields[3], f"[{address}]:{port}" if ":" in address else f"{address}:{port}",
                                int(fields[6]) if fields[6].isdigit() else 0))
        return found

    def map_entries(self, path: str) -> dict[str, str]:
        """The map's entries, key -> value (``show map``); raises when HAProxy has no
        such map loaded."""
        answer = self.send("show map", path)
        if "Unknown map identifier" in answer:
            raise missing_map(path)
        entries = {}
        for line in answer.splitlines():
            parts = line.split()
            if len(parts) == 3:
                entries[parts[1]] = parts[2]
        return entries


@dataclass(frozen=True)
class _Sweep:
    desired: DesiredState


@dataclass(frozen=True)
class _Route:
    op: str  # "+" or "-"
    route: Route


@dataclass(frozen=True)
class _Gone:
    container_id: str


class HaproxyHandler(Handler):
    """Keeps HAProxy's servers and map in step with this host's routes."""

    name = "haproxy"
    roles = frozenset({"registrar"})

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        settings = {k.lower(): v for k, v in (config.haproxy or {}).items()}
        self.api = RuntimeApi(str(settings.get("runtimeapi") or "/run/haproxy/admin.sock"))
        self.map_path = str(settings.get("map") or "/etc/haproxy/warden.map")
        self.inbox: "queue.Queue[Any]" = queue.Queue()
        #: Warden's backend -> HAProxy's, where a service names one (``haproxyBackend``)
        self.backends: dict[str, str] = {}
        #: HAProxy backend -> the frontends (map keys) of its services
        self.frontends_of: dict[str, tuple[str, ...]] = {}
        #: container id -> the servers it provides: (backend, name)
        self.servers_of: dict[str, set[tuple[str, str]]] = {}
        #: backends with a server taking requests, as Warden last made or saw them
        self.taking: dict[str, set[str]] = {}
        #: the map's entries as last read or written
        self.entries: dict[str, str] = {}
        self.reachable = True
        self.errors = 0
        self.repeats = Repeats(logger)
        self._worker = _Worker(self)
        self.workers = (self._worker,)
        #: HAProxy's process id as last seen: another one means it restarted
        self.pid: Optional[str] = None
        #: why this HAProxy cannot take Warden's routes at all (too old), or None
        self.refusal: Optional[RuntimeApiError] = None

    # -- hooks (the Registrar's thread: queue only) ------------------------------------

    def register(self, telemetry: Any) -> None:
        telemetry.dependency("haproxy", lambda: self.reachable and self.refusal is None)
        telemetry.counter_source("warden_haproxy_errors",
                                 "HAProxy runtime API commands refused or unanswered", lambda: self.errors)

    def proxy_backend(self, backend: str) -> str:
        """The HAProxy backend of Warden's backend ``backend`` (a service's
        ``haproxyBackend``, else its ``backendName``)."""
        return self.backends.get(backend, backend)

    def _learn(self, services: Any) -> None:
        self.backends = {s.backend_name: s.haproxy_backend for s in services if s.haproxy_backend}

    def on_route_added(self, sender: Any, *, route: Route, **kw: Any) -> None:
        self.inbox.put(_Route("+", replace(route, backend=self.proxy_backend(route.backend))))

    def on_route_removed(self, sender: Any, *, route: Route, **kw: Any) -> None:
        self.inbox.put(_Route("-", replace(route, backend=self.proxy_backend(route.backend))))

    def on_container_changed(self, sender: Any, *, action: str, container_id: str, **kw: Any) -> None:
        if action in ("die", "destroy", "oom"):
            self.inbox.put(_Gone(container_id))

    def on_services_changed(self, sender: Any, *, services: tuple = (), **kw: Any) -> None:
        self._learn(services)
        self.frontends_of = frontends_by_backend((map_key(s.frontend), self.proxy_backend(s.backend_name))
                                                 for s in services if s.frontend)

    def on_sweep(self, sender: Any, *, desired: DesiredState, apply: bool = True, wait: bool = True,
                 services: Any = None, **kw: Any) -> list[Change]:
        if services is not None:
            self._learn(services)
        desired = self.in_proxy_names(desired)
        self.frontends_of = frontends_by_backend((map_key(f), b) for f, b in sorted(desired.frontends.items()))
        if not wait:
            self.inbox.put(_Sweep(desired))
            return []
        try:
            return self.reconcile(desired, apply)
        except RuntimeApiError as error:
            if error is self.refusal:
                self.repeats.failed(str(error), logging.ERROR, "%s", error)  # said once, as by the worker
            else:
                logger.error("%s; routes wait for it", error)
            return []

    def in_proxy_names(self, desired: DesiredState) -> DesiredState:
        """``desired`` with HAProxy's backend names (several of Warden's may share one)."""
        if not self.backends:
            return desired
        backends: dict[str, frozenset[str]] = {}
        for backend, addresses in desired.backends.items():
            name = self.proxy_backend(backend)
            backends[name] = backends.get(name, frozenset()) | addresses
        return replace(desired, backends=backends,
                       frontends={f: self.proxy_backend(b) for f, b in desired.frontends.items()})

    # -- the worker's work -------------------------------------------------------------

    def command(self, verb: str, *args: str) -> str:
        """One command whose success is an empty answer; any other is a refusal (a map
        command on a map HAProxy did not load: :func:`missing_map`)."""
        answer = self.api.send(verb, *args).strip()
        if "Unknown map identifier" in answer:
            raise missing_map(self.map_path)
        if answer:
            raise RuntimeApiError(f"HAProxy refused {' '.join((verb,) + args)!r}: {answer.splitlines()[0]}")
        return answer

    def add_server(self, backend: str, address: str) -> None:
        name = server_name(address)
        answer = self.api.send("add server", f"{backend}/{name}", address).strip()
        if answer.startswith("No such backend"):
            raise missing_backend(backend)
        if not (answer.startswith("New server registered") or "Already exists" in answer):
            raise RuntimeApiError(f"HAProxy refused server {backend}/{name}: {answer.splitlines()[0] if answer else ''}")
        self.command("enable server", f"{backend}/{name}")
        self.taking.setdefault(backend, set()).add(name)
        self._made(Change("+", f"haproxy:{backend} {address}"))

    def hold_server(self, backend: str, address: str) -> None:
        """No new request reaches it; what is in flight finishes."""
        name = server_name(address)
        answer = self.api.send("set server", f"{backend}/{name}", "state", "maint").strip()
        if answer and not answer.startswith("No such server"):
            raise RuntimeApiError(f"HAProxy refused maint for {backend}/{name}: {answer.splitlines()[0]}")
        self.taking.get(backend, set()).discard(name)
        self._made(Change("-", f"haproxy:{backend} {address}"))

    def delete_server(self, backend: str, name: str) -> bool:
        """Delete a server in ``maint``; False while connections remain (a later sweep)."""
        answer = self.api.send("del server", f"{backend}/{name}").strip()
        if answer.startswith("Server deleted") or answer.startswith("No such server"):
            return True
        logger.debug("HAProxy keeps %s/%s for now: %s", backend, name, answer)
        return False

    def set_entries(self, backend: str, keys: tuple[str, ...]) -> None:
        wanted = bool(self.taking.get(backend))
        for key in keys:
            held = self.entries.get(key)
            if wanted and held is None:
                self.command("add map", self.map_path, key, backend)
                self.entries[key] = backend
                self._made(Change("+", f"haproxy-map:{key} {backend}"))
            elif not wanted and held == backend:
                self.drop_entry(key, backend)
            elif held is not None and held != backend and wanted:
                self.repeats.failed(f"foreign:{key}", logging.WARNING,
                                    "HAProxy map %s: %s names backend %s, not %s; left as it is (not Warden's)",
                                    self.map_path, key, held, backend)

    def drop_entry(self, key: str, backend: str) -> None:
        """Delete the map entry ``key`` (naming ``backend``)."""
        self.command("del map", self.map_path, key)
        del self.entries[key]
        self._made(Change("-", f"haproxy-map:{key} {backend}"))

    def apply_route(self, op: str, route: Route) -> None:
        if op == "+":
            self.add_server(route.backend, route.address)
            self.servers_of.setdefault(route.container_id, set()).add((route.backend, server_name(route.address)))
        else:
            self.hold_server(route.backend, route.address)
        self.set_entries(route.backend, self.frontends_of.get(route.backend, ()))

    def forget(self, container_id: str) -> None:
        for backend, name in sorted(self.servers_of.pop(container_id, set())):
            if name not in self.taking.get(backend, set()):
                self.delete_server(backend, name)

    def reconcile(self, desired: DesiredState, apply: bool = True) -> list[Change]:
        """Compare HAProxy's servers and map with ``desired``; with ``apply``, change
        Warden's servers and the services' entries to match. The changes."""
        if apply and self.refusal is not None:
            raise self.refusal
        servers = self.api.servers()
        try:
            self.entries = self.api.map_entries(self.map_path)
            mapped = True
        except RuntimeApiError as error:
            if "does not answer" in str(error):
                raise
            self.repeats.failed(str(error), logging.ERROR, "%s", error)
            self.errors += 1
            mapped = False
        ours: dict[str, dict[str, Server]] = {}
        others_taking: set[str] = set()
        for server in servers:
            if server.name.startswith(PREFIX):
                ours.setdefault(server.backend, {})[server.address] = server
            elif server.taking:
                others_taking.add(server.backend)
        known = {s.backend for s in servers} | set(self._declared())
        changes: list[Change] = []
        for backend, addresses in sorted(desired.backends.items()):
            if backend not in known and addresses:
                error = missing_backend(backend)
                self.repeats.failed(str(error), logging.ERROR, "%s", error)
                self.errors += 1
                continue
            held = ours.get(backend, {})
            for address in sorted(addresses):
                server = held.get(address)
                if server is None or not server.taking:
                    changes.append(Change("+", f"haproxy:{backend} {address}"))
                    if apply:
                        self.add_server(backend, address) if server is None else self._enable(backend, address)
            for address, server in sorted(held.items()):
                if address in addresses:
                    continue
                if server.taking:
                    changes.append(Change("-", f"haproxy:{backend} {address}"))
                    if apply:
                        self.hold_server(backend, address)
                if apply:
                    self.delete_server(backend, server.name)
            taking = {server_name(a) for a in addresses}
            if apply:
                self.taking[backend] = taking | ({"(file)"} if backend in others_taking else set())
        # A backend no service in force names, that held Warden's servers: a retired
        # service's (while Warden ran or before it started). Its servers go, and so do
        # the map entries naming it once nothing else in it takes requests: Warden
        # wrote them, as it writes an entry only over a server of its own.
        retired = sorted(set(ours) - set(desired.backends))
        for backend in retired:
            for address, server in sorted(ours[backend].items()):
                changes.append(Change("-", f"haproxy:{backend} {address}"))
                if apply:
                    self.hold_server(backend, address)
                    self.delete_server(backend, server.name)
        emptied = {b for b in retired if b not in others_taking}
        wanted_keys = {k for keys in self.frontends_of.values() for k in keys}
        for key, backend in sorted(self.entries.items() if mapped else ()):
            if backend in emptied and key not in wanted_keys:
                changes.append(Change("-", f"haproxy-map:{key} {backend}"))
                if apply:
                    self.drop_entry(key, backend)
        for backend, keys in sorted(self.frontends_of.items() if mapped else ()):
            wanted = bool(desired.backends.get(backend)) or backend in others_taking
            for key in keys:
                held = self.entries.get(key)
                if wanted and held is None:
                    changes.append(Change("+", f"haproxy-map:{key} {backend}"))
                elif not wanted and held == backend:
                    changes.append(Change("-", f"haproxy-map:{key} {backend}"))
            if apply:
                self.set_entries(backend, keys)
        return changes

    def _enable(self, backend: str, address: str) -> None:
        self.command("enable server", f"{backend}/{server_name(address)}")
        self.taking.setdefault(backend, set()).add(server_name(address))
        self._made(Change("+", f"haproxy:{backend} {address}"))

    def _declared(self) -> list[str]:
        """The backends HAProxy has, servers or not (``show backend``)."""
        return [line.strip() for line in self.api("show backend").splitlines()
                if line.strip() and not line.startswith("#")]

    def _made(self, change: Change) -> None:
        logger.info("%s", change, extra={"change": str(change)})
        signals.send(signals.change_made, self, change=change, service=None, container_id="")

    def restarted(self) -> bool:
        """Has HAProxy restarted (another process id) since the last look?"""
        pid = None
        info = self.api("show info")
        for line in info.splitlines():
            if line.startswith("Pid:"):
                pid = line.split(":", 1)[1].strip()
        self.refusal = too_old(info, self.api.address)
        before, self.pid = self.pid, pid
        return before is not None and pid != before


class _Worker(StoppableThread):
    """Carries out the handler's work in order; when HAProxy does not answer, waits
    with backoff and asks for a sweep once it does."""

    #: seconds between looks at HAProxy's process id
    look_seconds = 1.0

    def __init__(self, handler: HaproxyHandler) -> None:
        super().__init__("warden-haproxy")
        self.handler = handler
        self.backoff = Backoff(0.5, 10.0)
        self._next_look = 0.0

    def on_stop(self) -> None:
        self.handler.inbox.put(None)

    def run(self) -> None:
        handler = self.handler
        while not self.stopping:
            try:
                item = handler.inbox.get(timeout=self.look_seconds)
            except queue.Empty:
                item = None
            if self.stopping:
                break
            try:
                if time.monotonic() >= self._next_look:
                    self._next_look = time.monotonic() + self.look_seconds
                    if handler.restarted():
                        logger.warning("HAProxy restarted: sweeping")
                        signals.send(signals.sweep_requested, handler, reason="HAProxy restarted")
                if handler.refusal is not None and item is not None:
                    raise handler.refusal
                if isinstance(item, _Route):
                    handler.apply_route(item.op, item.route)
                elif isinstance(item, _Gone):
                    handler.forget(item.container_id)
                elif isinstance(item, _Sweep):
                    handler.reconcile(item.desired)
                if not handler.reachable:
                    handler.reachable = True
                    handler.repeats.ended("api", "HAProxy runtime API %s answers again: sweeping",
                                          handler.api.address)
                    signals.send(signals.sweep_requested, handler, reason="HAProxy answers again")
                self.backoff.reset()
            except RuntimeApiError as error:
                handler.errors += 1
                unanswered = "does not answer" in str(error)
                if unanswered:
                    handler.reachable = False
                    # What was queued is redone by the sweep once HAProxy answers.
                    while not handler.inbox.empty():
                        handler.inbox.get_nowait()
                    handler.repeats.failed("api", logging.ERROR, "%s; routes wait for it", error)
                    self.stop_event.wait(self.backoff.next_delay())
                else:
                    # One command refused (a backend haproxy.cfg lacks, a map it did not
                    # load): said once, counted; the other services go on.
                    handler.repeats.failed(str(error), logging.ERROR, "%s", error)
