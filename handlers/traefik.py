"""The Traefik handler: this host's routes in the Redis that Traefik's Redis provider
reads.

Config: ``"traefik": {"redisAddress": "127.0.0.1:6379" (or a redis:// URL), "rootKey":
"traefik", "entryPoints": ["web"]}``.

- A backend is ``<rootKey>/http/services/<backend>/loadBalancer/servers/<n>/url``
  entries (``http://ip:port``); each frontend (``loadBalancerUrl`` and ``site``) is the
  router ``<rootKey>/http/routers/warden-<frontend>`` with its ``rule`` (``Host(...)``,
  and ``PathPrefix(...)`` with a site), ``service`` and ``entryPoints/<i>``.
- A backend's servers and its routers are written together in one MULTI, and a router
  exists only while its backend has a server: Traefik never holds a router over an
  empty service (it would answer 503 instead of falling through).
- Warden changes only the servers it owns (this host's container addresses, as the
  Redx handler judges them) and routers named ``warden-...``; other servers in the list
  stay, renumbered.
- Every router uses the retry middleware ``warden-retry`` and every service the servers
  transport ``warden`` (1 s connect timeout): a request Traefik sends to a container
  killed a moment before is retried on another server. These keys stay when no route
  does (Traefik skips an empty configuration, which kept the last router for ever).
- Traefik's Redis provider sees changes only through keyspace notifications: without
  ``notify-keyspace-events`` (``KEA``) it takes none. Warden reads the setting at start
  and says what is missing.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Optional

import redis

from warden import signals
from warden.config import Config
from warden.handlers import Handler
from warden.model import Change, DesiredState, Ownership, Route, frontends_by_backend
from warden.names import UnsafeName, frontend_parts, name_problem
from warden.runtime.threads import StoppableThread

logger = logging.getLogger(__name__)


def router_name(frontend: str) -> str:
    """Warden's router for a frontend: ``warden-`` and the frontend in letters, digits
    and ``-``."""
    return "warden-" + re.sub(r"[^A-Za-z0-9-]", "-", frontend.lower()).strip("-")


def rule(frontend: str) -> str:
    """Traefik's rule for ``host`` or ``host/path``, built from the parts the frontend
    grammar admits (no backtick, parenthesis, ``|`` or ``&`` can reach it);
    :class:`~warden.names.UnsafeName` for a frontend outside it."""
    host, path = frontend_parts(frontend)
    text = f"Host(`{host.lower()}`)"
    return text + (f" && PathPrefix(`{path}`)" if len(path) > 1 else "")


def address_of(url: str) -> str:
    """``http://ip:port`` -> ``ip:port``."""
    return url.split("://", 1)[-1].rstrip("/")


class TraefikStore:
    """Traefik's Redis provider as Warden reaches it (the client, the root key, the
    entry points) and where each of Warden's keys sits there: what the handler writes
    and ``warden status`` reads."""

    def __init__(self, config: Config, client: Optional[redis.Redis] = None) -> None:
        settings = {k.lower(): v for k, v in (config.traefik or {}).items()}
        address = str(settings.get("redisaddress") or "127.0.0.1:6379")
        self.display = address.split("@")[-1]
        self.root = str(settings.get("rootkey") or "traefik").strip("/")
        self.entry_points = tuple(str(e) for e in settings.get("entrypoints") or ("web",))
        if client is None:
            if "://" in address:
                client = redis.Redis.from_url(address, decode_responses=True, socket_timeout=2,
                                              socket_connect_timeout=2)
            else:
                host, _, port = address.rpartition(":")
                client = redis.Redis(host=host or "127.0.0.1", port=int(port), decode_responses=True,
                                     socket_timeout=2, socket_connect_timeout=2)
        self.redis = client

    def servers_prefix(self, backend: str) -> str:
        return f"{self.root}/http/services/{backend}/loadBalancer/servers/"

    def router_prefix(self, frontend: str) -> str:
        return self.router_keys(router_name(frontend))

    def router_keys(self, name: str) -> str:
        """Where the keys of Warden's router ``name`` start."""
        return f"{self.root}/http/routers/{name}/"

    def servers(self, backend: str) -> tuple[list[str], list[str]]:
        """A backend's server keys and the addresses they hold."""
        keys = sorted(self.redis.scan_iter(match=self.servers_prefix(backend) + "*/url", count=500))
        urls = self.redis.mget(keys) if keys else []
        return keys, [address_of(u) for u in urls if u]

    def record(self) -> str:
        """Warden's ownership record in the same Redis, outside the root key (Traefik
        reads nothing there): the set of backends Warden has written servers into, so
        a sweep after a restart knows what a retired service left."""
        return f"warden:traefik:{self.root}:backends"

    def router_record(self) -> str:
        """The set of the routers Warden wrote (a ``warden-`` name alone does not prove
        it: an operator may have written one)."""
        return f"warden:traefik:{self.root}:routers"

    def keeper(self) -> str:
        """A key of Warden's that stays when no route does: Traefik skips a provider's
        empty configuration and keeps serving the previous one, so without it the last
        router's removal would never take effect. Its absence means a flushed Redis."""
        return f"{self.root}/http/middlewares/warden-retry/retry/attempts"

    def shared_keys(self) -> dict[str, str]:
        """What every router and service of Warden's uses: a retry on another server
        when one fails to connect (a container killed a moment ago), and connects that
        give up after 1 s (a killed container's address no longer answers at all)."""
        return {self.keeper(): "2",
                f"{self.root}/http/serversTransports/warden/forwardingTimeouts/dialTimeout": "1s"}


class TraefikHandler(Handler):
    """Keeps Traefik's Redis provider keys in step with this host's routes."""

    name = "traefik"
    roles = frozenset({"registrar"})

    def __init__(self, config: Config, client: Optional[redis.Redis] = None) -> None:
        super().__init__(config)
        self.store = TraefikStore(config, client)
        #: backend -> the frontends of its services
        self.frontends_of: dict[str, tuple[str, ...]] = {}
        #: backend -> this host's addresses in it
        self.addresses: dict[str, set[str]] = {}
        #: the rule of which addresses are Warden's, from the last sweep
        self.ownership: Optional[Ownership] = None
        self.errors = 0
        self._said: set[str] = set()
        #: True once Warden wrote its keeper key: its absence then means a flushed or
        #: restarted Redis
        self.written = False
        self._watcher = _Watcher(self)
        self.workers = (self._watcher,)

    def start(self) -> None:
        self.check_notifications()
        super().start()

    def register(self, telemetry: Any) -> None:
        telemetry.dependency("traefik-redis", lambda: self._watcher.reachable)
        telemetry.counter_source("warden_traefik_errors", "Writes Traefik's Redis refused or did not answer",
                                 lambda: self.errors)

    def check_notifications(self) -> Optional[str]:
        """What Traefik's Redis lacks for Traefik to see changes, said once; None when
        nothing (or when the setting cannot be read)."""
        try:
            value = str(self.store.redis.config_get("notify-keyspace-events").get("notify-keyspace-events", ""))
        except redis.RedisError as error:
            logger.debug("cannot read notify-keyspace-events of %s: %s", self.store.display, error)
            return None
        if "K" in value and ("A" in value or {"g", "$"} <= set(value)):
            return None
        problem = (f"Traefik's Redis {self.store.display} has notify-keyspace-events {value!r}: Traefik's Redis "
                   f"provider sees changes only through keyspace notifications; set it to KEA "
                   f"(redis-cli config set notify-keyspace-events KEA, or notify-keyspace-events KEA in "
                   f"redis.conf)")
        logger.error("%s", problem)
        return problem

    # -- writing ---------------------------------------------------------------------

    def write_backend(self, backend: str, apply: bool = True) -> list[Change]:
        """Rewrite one backend's servers (Warden's as wanted, others kept) and its
        routers (present only with a server), in one MULTI; the changes."""
        if name_problem(backend):
            raise UnsafeName(f"backend {name_problem(backend)}")
        rules = {}
        for frontend in self.frontends_of.get(backend, ()):
            try:
                rules[frontend] = rule(frontend)
            except UnsafeName as error:
                self._failed(f"router of {frontend!r}", error)
        keys, held = self.store.servers(backend)
        ownership = self.ownership
        wanted = self.addresses.get(backend, set())
        # Before the first sweep there is no ownership rule yet: every other server stays.
        foreign = [a for a in held if a not in wanted and not (ownership is not None and ownership.owns(backend, a))]
        servers = sorted(set(foreign) | wanted)
        changes = [Change("+", f"traefik:{backend} {a}") for a in sorted(wanted - set(held))]
        changes += [Change("-", f"traefik:{backend} {a}") for a in sorted(set(held) - set(servers))]
        routers = tuple(rules)
        router_changes = []
        for frontend in routers:
            present = bool(self.store.redis.exists(self.store.router_prefix(frontend) + "rule"))
            if servers and not present:
                router_changes.append(Change("+", f"traefik-router:{router_name(frontend)} {backend}"))
            elif not servers and present:
                router_changes.append(Change("-", f"traefik-router:{router_name(frontend)} {backend}"))
        changes += router_changes
        if not apply or not changes:
            return changes
        pipe = self.store.redis.pipeline(transaction=True)
        for key, value in self.store.shared_keys().items():
            pipe.set(key, value)
        self._queue_servers(pipe, backend, keys, servers)
        for frontend in routers:
            router = self.store.router_prefix(frontend)
            if servers:
                pipe.sadd(self.store.router_record(), router_name(frontend))
                pipe.set(router + "rule", rules[frontend])
                pipe.set(router + "service", backend)
                for i, entry_point in enumerate(self.store.entry_points):
                    pipe.set(f"{router}entryPoints/{i}", entry_point)
                pipe.set(f"{router}middlewares/0", "warden-retry")
            else:
                self._queue_router_removal(pipe, router_name(frontend))
        if wanted:
            pipe.sadd(self.store.record(), backend)
        pipe.execute()
        self.written = True
        for change in changes:
            self._made(change)
        return changes

    def _queue_servers(self, pipe: Any, backend: str, keys: list[str], servers: list[str]) -> None:
        """Queue ``backend``'s server list rewritten as ``servers`` (numbered from 0; the
        old ``keys`` go), with Warden's servers transport while any stands."""
        transport = f"{self.store.root}/http/services/{backend}/loadBalancer/serversTransport"
        if keys:
            pipe.delete(*keys)
        for n, address in enumerate(servers):
            pipe.set(f"{self.store.servers_prefix(backend)}{n}/url", f"http://{address}")
        if servers:
            pipe.set(transport, "warden")
        else:
            pipe.delete(transport)

    def _queue_router_removal(self, pipe: Any, name: str) -> None:
        """Queue the deletion of Warden's router ``name`` and its entry in the record."""
        old = list(self.store.redis.scan_iter(match=self.store.router_keys(name) + "*", count=100))
        if old:
            pipe.delete(*old)
        pipe.srem(self.store.router_record(), name)

    def retire_strays(self, desired: DesiredState, apply: bool = True) -> list[Change]:
        """What the store holds of Warden's for services no longer in force, from the
        store itself (after a restart as while running): the routers of its record
        that no frontend in force has, and Warden's servers in the backends of its
        record that no service in force names. Foreign servers and routers stay."""
        wanted_routers = {router_name(f) for f in desired.frontends}
        changes: list[Change] = []
        stray_routers = sorted(set(self.store.redis.smembers(self.store.router_record())) - wanted_routers)
        pipe = self.store.redis.pipeline(transaction=True)
        for name in stray_routers:
            backend = self.store.redis.get(self.store.router_keys(name) + "service") or "?"
            changes.append(Change("-", f"traefik-router:{name} {backend}"))
            self._queue_router_removal(pipe, name)
        wanted_backends = set(desired.backends) | set(self.frontends_of)
        for backend in sorted(set(self.store.redis.smembers(self.store.record())) - wanted_backends):
            keys, held = self.store.servers(backend)
            kept = [a for a in held if not desired.ownership.owns(backend, a)]
            changes += [Change("-", f"traefik:{backend} {a}") for a in sorted(set(held) - set(kept))]
            self._queue_servers(pipe, backend, keys, kept)
            pipe.srem(self.store.record(), backend)
        if apply:
            pipe.execute()
            for change in changes:
                self._made(change)
        return changes

    def _made(self, change: Change) -> None:
        logger.info("%s", change, extra={"change": str(change)})
        signals.send(signals.change_made, self, change=change, service=None, container_id="")

    def _failed(self, what: str, error: Exception) -> None:
        self.errors += 1
        key = f"{what}:{type(error).__name__}"
        if key not in self._said:
            self._said.add(key)
            if isinstance(error, UnsafeName):
                logger.error("refused to write %s to Traefik's Redis %s: %s", what, self.store.display, error)
            else:
                logger.error("cannot write %s to Traefik's Redis %s (%s); the next sweep will", what,
                             self.store.display, error)

    # -- hooks -------------------------------------------------------------------------

    def on_route_added(self, sender: Any, *, route: Route, **kw: Any) -> None:
        self.addresses.setdefault(route.backend, set()).add(route.address)
        self._write(route.backend)

    def on_route_removed(self, sender: Any, *, route: Route, **kw: Any) -> None:
        self.addresses.get(route.backend, set()).discard(route.address)
        self._write(route.backend)

    def _write(self, backend: str) -> None:
        try:
            self.write_backend(backend)
        except (redis.RedisError, UnsafeName) as error:
            self._failed(f"backend {backend}", error)

    def on_sweep(self, sender: Any, *, desired: DesiredState, apply: bool = True, **kw: Any) -> list[Change]:
        self.frontends_of = frontends_by_backend(sorted(desired.frontends.items()))
        self.ownership = desired.ownership
        if apply:
            self.addresses = {backend: set(addresses) for backend, addresses in desired.backends.items()}
        changes: list[Change] = []
        for backend in sorted(set(desired.backends) | set(self.frontends_of)):
            try:
                if apply:
                    changes += self.write_backend(backend)
                else:
                    saved = self.addresses
                    self.addresses = {b: set(a) for b, a in desired.backends.items()}
                    try:
                        changes += self.write_backend(backend, apply=False)
                    finally:
                        self.addresses = saved
            except (redis.RedisError, UnsafeName) as error:
                self._failed(f"backend {backend}", error)
        try:
            changes += self.retire_strays(desired, apply)
        except redis.RedisError as error:
            self._failed("retired services", error)
        if apply and changes:
            self._said.clear()
        return changes


class _Watcher(StoppableThread):
    """Once a second: is Warden's keeper key still in Traefik's Redis? A flushed or
    restarted Redis (its keys are not persisted) lost the routes: a sweep puts them
    back; one that did not answer and answers again too."""

    #: seconds between looks
    interval = 1.0

    def __init__(self, handler: TraefikHandler) -> None:
        super().__init__("warden-traefik-watch")
        self.handler = handler
        self.reachable = True

    def run(self) -> None:
        handler = self.handler
        while not self.stop_event.wait(self.interval):
            try:
                lost = handler.written and not handler.store.redis.exists(handler.store.keeper())
            except redis.RedisError:
                self.reachable = False
                continue
            reason = ""
            if not self.reachable:
                self.reachable, reason = True, "Traefik's Redis answers again"
            elif lost:
                reason = "Traefik's Redis lost Warden's keys"
            if reason:
                logger.warning("%s: sweeping", reason)
                handler.written = False
                signals.send(signals.sweep_requested, handler, reason=reason)
