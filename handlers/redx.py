"""The Redx handler: writes this host's routes into the Redis that Redx reads.

``frontend:<loadBalancerUrl><site>`` holds the backend name; ``backend:<name>`` is a
hash of ``ip:port`` -> ``"0"``. Warden changes only the addresses it owns (inside this
host's Docker networks, or ``hostAddress:<port>`` of published ports); fields starting
with ``_`` (Redx's backend config), static servers and other tools' keys stay as they
are.

A frontend key exists only while its backend holds at least one server: Redx answers
500 for a frontend over an empty backend, and sends a request to nginx's fallback only
when the frontend key is missing. So the first server is written before the frontend,
and the last server and the frontend (if it still names this backend) go in one atomic
step (a script, or one MULTI in a sweep).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Optional

import redis

from warden import signals
from warden.config import Config
from warden.handlers import Handler
from warden.model import Change, DesiredState, Ownership, Route, frontends_by_backend
from warden.services import Service

logger = logging.getLogger(__name__)

#: deletes a frontend key only if it still names the backend being retired
_DELETE_IF_NAMES = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: KEYS: the backend, its record key, then each frontend followed by its record key.
#: ARGV: the address, the backend name. Adds the server, sets each frontend that is
#: missing, then records the backend and each frontend that names it. Returns the
#: frontends set.
_ADD_SERVER = """
redis.call('HSET', KEYS[1], ARGV[1], '0')
local set = {}
for i = 3, #KEYS, 2 do
  if redis.call('SET', KEYS[i], ARGV[2], 'NX') then table.insert(set, KEYS[i]) end
end
redis.call('SET', KEYS[2], '1')
for i = 3, #KEYS, 2 do
  if redis.call('GET', KEYS[i]) == ARGV[2] then redis.call('SET', KEYS[i + 1], ARGV[2]) end
end
return set
"""

#: KEYS and ARGV as for _ADD_SERVER. Removes the server; when no server is left (``_``
#: fields are config, not servers), removes each frontend that still names this
#: backend, and its record. Returns the frontends removed.
_REMOVE_SERVER = """
redis.call('HDEL', KEYS[1], ARGV[1])
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 1) ~= '_' then return {} end
end
local gone = {}
for i = 3, #KEYS, 2 do
  if redis.call('GET', KEYS[i]) == ARGV[2] then
    redis.call('DEL', KEYS[i], KEYS[i + 1])
    table.insert(gone, KEYS[i])
  end
end
return gone
"""

#: Warden's ownership record in the Redx Redis (Redx reads only ``frontend:`` and
#: ``backend:`` keys): ``warden:redx:backend:<name>`` for each backend Warden has written
#: servers into, and ``warden:redx:frontend:<key>`` (the backend it names) for each
#: frontend key it wrote. A sweep retires from it what services no longer in force
#: left, after a restart as while running.
RECORD_PREFIX = "warden:redx:"
RECORD_BACKEND = RECORD_PREFIX + "backend:"
RECORD_FRONTEND = RECORD_PREFIX + "frontend:"


#: the score Redx starts every server with
SCORE = "0"


def frontend_key(frontend: str) -> str:
    """The key Redx reads a frontend from (``frontend`` is ``<loadBalancerUrl><site>``)."""
    return f"frontend:{frontend}"


def backend_key(backend: str) -> str:
    """The hash Redx reads a backend's servers from."""
    return f"backend:{backend}"


def kept_keys(services: Iterable[Service], routed_backends: Iterable[str]) -> tuple[str, ...]:
    """The keys that must exist in the Redx Redis unless something wiped it: each
    backend with a route on this host, and its frontends (a frontend over an empty
    backend is removed on purpose)."""
    routed = set(routed_backends)
    frontends = {frontend_key(s.frontend) for s in services if s.frontend and s.backend_name in routed}
    return tuple(sorted(frontends) + sorted(backend_key(b) for b in routed))


def is_server(field: str) -> bool:
    """A field of a ``backend:`` hash that is a server (``_`` fields are Redx config)."""
    return not field.startswith("_")


def foreign_keys(client: redis.Redis, display: str, service: Service,
                 ownership: Ownership) -> Optional[tuple[str, str]]:
    """Why a label-defined ``service`` may not take its keys, as ``(label, reason)``, or
    None: a frontend key that names another backend (an operator's, or another tool's),
    or a backend holding servers outside this host's addresses. What cannot be read is
    refused too, and judged again at the next sweep."""
    frontend, backend = frontend_key(service.frontend), backend_key(service.backend_name)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.get(frontend)
        pipe.hkeys(backend)
        named, fields = pipe.execute()
    except redis.RedisError as error:
        return "frontend", (f"cannot check {frontend} and {backend} in the Redx Redis {display} "
                            f"({error}); checked again at the next sweep")
    if named is not None and named != service.backend_name:
        return "frontend", f"{frontend} names backend {named!r}, which Warden did not write"
    foreign = sorted(a for a in fields if is_server(a) and not ownership.owns(service.backend_name, a))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        return "backend", f"{backend} holds servers Warden did not write ({shown})"
    return None


def redx_client(config: Config) -> redis.Redis:
    """A client for this host's Redx Redis with short timeouts: a route write that
    cannot happen fails fast and the next sweep makes up for it."""
    return config.nginx_redis.client(decode_responses=True, socket_timeout=2,
                                     socket_connect_timeout=2)


class RedxHandler(Handler):
    """Keeps the Redx Redis in step with the Registrar's routes."""

    name = "redx"
    roles = frozenset({"registrar"})

    def __init__(self, config: Config, client: Optional[redis.Redis] = None) -> None:
        super().__init__(config)
        self.redis = client or redx_client(config)
        self._delete_if_names = self.redis.register_script(_DELETE_IF_NAMES)
        self._add_server = self.redis.register_script(_ADD_SERVER)
        self._remove_server = self.redis.register_script(_REMOVE_SERVER)
        #: backend -> the frontend keys that name it, from the last sweep's desired state
        self.frontends_of: dict[str, tuple[str, ...]] = {}
        #: what retired services held and is not yet emptied: backend -> the ownership
        #: rule of its day, and frontend key -> the backend it named. Kept until the
        #: Redx Redis takes it, so a retirement during an outage is never lost.
        self.retiring_backends: dict[str, Ownership] = {}
        self.retiring_frontends: dict[str, str] = {}

    def _made(self, change: Change, service: Optional[str] = None, container_id: str = "") -> None:
        logger.info("%s%s", change, f" (service {service}, container {container_id[:12]})"
                    if container_id else "",
                    extra={"change": str(change), "service": service, "container": container_id[:12] or None})
        signals.send(signals.change_made, self, change=change, service=service,
                     container_id=container_id)

    def on_label_service_proposed(self, sender: Any, *, service: Service, ownership: Ownership,
                                  **kw: Any) -> Optional[tuple[str, str]]:
        return foreign_keys(self.redis, self.config.nginx_redis.display, service, ownership)

    def on_route_added(self, sender: Any, *, route: Route, **kw: Any) -> None:
        self._write_route("+", route)

    def on_route_removed(self, sender: Any, *, route: Route, **kw: Any) -> None:
        self._write_route("-", route)

    def _write_route(self, op: str, route: Route) -> None:
        key = backend_key(route.backend)
        script = self._add_server if op == "+" else self._remove_server
        try:
            touched = script(keys=[key, RECORD_BACKEND + route.backend,
                                   *(k for f in self.frontends_of.get(route.backend, ())
                                     for k in (frontend_key(f), RECORD_FRONTEND + f))],
                             args=[route.address, route.backend])
        except redis.RedisError as error:
            logger.warning("cannot write %s %s %s (%s); the next sweep will",
                           op, key, route.address, error)
            return
        self._made(Change(op, f"{key} {route.address}"), route.service, route.container_id)
        for frontend in touched:
            self._made(Change(op, f"{frontend} {route.backend}"), route.service, route.container_id)

    def on_services_changed(self, sender: Any, *, services: tuple = (), retired: DesiredState,
                            **kw: Any) -> None:
        """Empty what retired services held: owned addresses leave their old backends,
        and an old frontend key goes if it still names the old backend. What the Redx
        Redis does not take now is retried at every sweep until it does. The new
        services' frontends are written with their first server from now on."""
        self.frontends_of = frontends_by_backend((s.frontend, s.backend_name) for s in services if s.frontend)
        for backend in retired.backends:
            self.retiring_backends[backend] = retired.ownership
        self.retiring_frontends.update(retired.frontends)
        self._retire()

    def _retire(self) -> None:
        try:
            for backend in sorted(self.retiring_backends):
                ownership = self.retiring_backends[backend]
                servers = self.redis.hgetall(backend_key(backend))
                owned = sorted(a for a in servers if is_server(a) and ownership.owns(backend, a))
                if owned:
                    self.redis.hdel(backend_key(backend), *owned)
                del self.retiring_backends[backend]
                for address in owned:
                    self._made(Change("-", f"{backend_key(backend)} {address}"))
            for key in sorted(self.retiring_frontends):
                backend = self.retiring_frontends[key]
                deleted = self._delete_if_names(keys=[frontend_key(key)], args=[backend])
                del self.retiring_frontends[key]
                if deleted:
                    self._made(Change("-", f"{frontend_key(key)} {backend}"))
        except redis.RedisError as error:
            logger.warning("Redx Redis %s did not take a retirement (%s); retrying at the next sweep: "
                           "%s", self.config.nginx_redis.display, error,
                           ", ".join([backend_key(b) for b in sorted(self.retiring_backends)]
                                     + [frontend_key(k) for k in sorted(self.retiring_frontends)]))

    def plan(self, desired: DesiredState) -> tuple[list[Change], list[tuple[str, str, str]]]:
        """Compare ``desired`` with what the Redx Redis holds, in one round trip.
        Returns the change lines and the writes (``hset``/``set``/``hdel``/``unset``)
        they need. A frontend is wanted only while its backend will hold a server (a
        static one counts); over an empty backend it goes, if it still names it. A key
        Redis refuses to read (of the wrong type, say) is left alone and reported;
        every other key is reconciled."""
        frontends = sorted(desired.frontends)
        backends = sorted(desired.backends)
        replies = self._read(frontends, backends)
        recorded_backends, recorded_frontends = self.record()
        #: Warden's record brought up to date: written after the changes, in the same MULTI
        records: list[tuple[str, str, str]] = []
        changes: list[Change] = []
        writes: list[tuple[str, str, str]] = []
        removals: list[tuple[Change, tuple[str, str, str]]] = []
        #: backend -> servers it will hold once the writes are made (None: unknown)
        servers_after: dict[str, Optional[int]] = {}
        for name, held in zip(backends, replies[len(frontends):]):
            if isinstance(held, Exception):
                self._key_error(backend_key(name), held)
                servers_after[name] = None
                continue
            wanted = desired.backends[name]
            for address in sorted(wanted - set(held)):
                changes.append(Change("+", f"{backend_key(name)} {address}"))
                writes.append(("hset", backend_key(name), address))
            gone = set()
            for address in sorted(held):
                if (address not in wanted and is_server(address)
                        and desired.ownership.owns(name, address)):
                    gone.add(address)
                    removals.append((Change("-", f"{backend_key(name)} {address}"),
                                     ("hdel", backend_key(name), address)))
            servers_after[name] = len(({a for a in held if is_server(a)} | wanted) - gone)
            if wanted and name not in recorded_backends:
                records.append(("set", RECORD_BACKEND + name, "1"))
        for key, held in zip(frontends, replies[:len(frontends)]):
            if isinstance(held, Exception):
                self._key_error(frontend_key(key), held)
                continue
            backend = desired.frontends[key]
            servers = servers_after.get(backend)
            if servers is None:
                continue
            if servers and held != backend:
                if held is not None:
                    logger.warning("frontend:%s named backend %r; setting it to %r",
                                   key, held, backend)
                changes.append(Change("+", f"{frontend_key(key)} {backend}"))
                writes.append(("set", frontend_key(key), backend))
            elif not servers and held == backend:
                # No server behind it: Redx would answer 500; without the key it falls back.
                removals.append((Change("-", f"{frontend_key(key)} {backend}"),
                                 ("unset", frontend_key(key), backend)))
            if servers and recorded_frontends.get(key) != backend:
                records.append(("set", RECORD_FRONTEND + key, backend))
        self._plan_strays(desired, recorded_backends, recorded_frontends, removals, records)
        for change, write in removals:
            changes.append(change)
            writes.append(write)
        # The record's writes come last and make no change line of their own.
        return changes, writes + records

    def _read(self, frontends: list[str], backends: list[str]) -> list[Any]:
        """The frontend keys' values, then the backend hashes, in one round trip (an
        error in place of a key Redis refuses to read)."""
        pipe = self.redis.pipeline(transaction=False)
        for key in frontends:
            pipe.get(frontend_key(key))
        for name in backends:
            pipe.hgetall(backend_key(name))
        return pipe.execute(raise_on_error=False)

    def record(self) -> tuple[set[str], dict[str, str]]:
        """Warden's record: the backends it wrote servers into, and the frontend keys it
        wrote with the backend each named."""
        recorded = list(self.redis.scan_iter(match=RECORD_PREFIX + "*", count=1000))
        backends = {k[len(RECORD_BACKEND):] for k in recorded if k.startswith(RECORD_BACKEND)}
        keys = sorted(k for k in recorded if k.startswith(RECORD_FRONTEND))
        values = self.redis.mget(keys) if keys else []
        return backends, {k[len(RECORD_FRONTEND):]: v for k, v in zip(keys, values) if v is not None}

    def _plan_strays(self, desired: DesiredState, recorded_backends: set, recorded_frontends: dict,
                     removals: list, records: list) -> None:
        """What Warden's record says it wrote for services no longer in force: its
        addresses leave those backends, and a recorded frontend no service in force
        has goes if it still names its backend (foreign servers and keys stay)."""
        backends = sorted(set(recorded_backends) - set(desired.backends))
        frontends = sorted(set(recorded_frontends) - set(desired.frontends))
        if not backends and not frontends:
            return
        replies = self._read(frontends, backends)
        for name, held in zip(backends, replies[len(frontends):]):
            if isinstance(held, Exception):
                self._key_error(backend_key(name), held)
                continue
            for address in sorted(a for a in held if is_server(a) and desired.ownership.owns(name, a)):
                removals.append((Change("-", f"{backend_key(name)} {address}"), ("hdel", backend_key(name), address)))
            records.append(("del", RECORD_BACKEND + name, ""))
        for key, held in zip(frontends, replies[:len(frontends)]):
            if isinstance(held, Exception):
                self._key_error(frontend_key(key), held)
                continue
            backend = recorded_frontends[key]
            if held == backend:
                removals.append((Change("-", f"{frontend_key(key)} {backend}"), ("unset", frontend_key(key), backend)))
            records.append(("del", RECORD_FRONTEND + key, ""))

    def _key_error(self, key: str, error: Exception) -> None:
        logger.error("%s cannot be reconciled (%s); its service is skipped, the others go on",
                     key, error)
        signals.send(signals.redx_key_failed, self, key=key, error=str(error))

    def on_sweep(self, sender: Any, *, desired: DesiredState, apply: bool = True,
                 **kw: Any) -> list[Change]:
        self.frontends_of = frontends_by_backend(sorted(desired.frontends.items()))
        try:
            if apply:
                # A retired backend or frontend that is wanted again is no longer retired.
                for backend in set(self.retiring_backends) & set(desired.backends):
                    del self.retiring_backends[backend]
                for key in set(self.retiring_frontends) & set(desired.frontends):
                    del self.retiring_frontends[key]
                if self.retiring_backends or self.retiring_frontends:
                    self._retire()
            return self.reconcile(desired, apply)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            logger.warning("Redx Redis %s unreachable; routes wait for it: %s",
                           self.config.nginx_redis.display, error)
            return []

    def reconcile(self, desired: DesiredState, apply: bool) -> list[Change]:
        """Plan, and with ``apply`` write, in one MULTI: Redx never sees a frontend over
        a backend that is empty midway. A write Redis refuses is reported and left out
        of the changes made."""
        changes, writes = self.plan(desired)
        if apply and writes:
            pipe = self.redis.pipeline(transaction=True)
            for op, key, value in writes:
                if op == "set":
                    pipe.set(key, value)
                elif op == "hset":
                    pipe.hset(key, value, SCORE)
                elif op == "hdel":
                    pipe.hdel(key, value)
                elif op == "del":
                    pipe.delete(key)
                else:
                    self._delete_if_names(keys=[key], args=[value], client=pipe)
            replies = pipe.execute(raise_on_error=False)
            made = []
            for change, (op, key, _), reply in zip(changes, writes, replies):
                if isinstance(reply, Exception):
                    self._key_error(key, reply)
                    continue
                if op == "unset" and not reply:
                    continue  # it named another backend by the time of the write
                self._made(change)
                made.append(change)
            return made
        return changes

    def stop(self) -> None:
        self.redis.close()
