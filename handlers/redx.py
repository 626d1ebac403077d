"""The Redx handler: writes this host's routes into the Redis that Redx reads.

``frontend:<loadBalancerUrl><site>`` holds the backend name; ``backend:<name>`` is a
hash of ``ip:port`` -> ``"0"``. Warden changes only the addresses it owns (inside this
host's Docker networks, or ``hostAddress:<port>`` of published ports); fields starting
with ``_`` (Redx's backend config), static servers and other tools' keys stay as they
are.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import redis

from warden import signals
from warden.config import Config
from warden.handlers import Handler
from warden.model import Change, DesiredState, Ownership, Route

logger = logging.getLogger(__name__)

#: deletes a frontend key only if it still names the backend being retired
_DELETE_IF_NAMES = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: the score Redx starts every server with
SCORE = "0"


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
        #: what retired services held and is not yet emptied: backend -> the ownership
        #: rule of its day, and frontend key -> the backend it named. Kept until the
        #: Redx Redis takes it, so a retirement during an outage is never lost.
        self.retiring_backends: dict[str, Ownership] = {}
        self.retiring_frontends: dict[str, str] = {}

    def _made(self, change: Change, service: Optional[str] = None, container_id: str = "") -> None:
        logger.info("%s%s", change, f" (service {service}, container {container_id[:12]})"
                    if container_id else "")
        signals.send(signals.change_made, self, change=change, service=service,
                     container_id=container_id)

    def on_route_added(self, sender: Any, *, route: Route, **kw: Any) -> None:
        self._write_route("+", route)

    def on_route_removed(self, sender: Any, *, route: Route, **kw: Any) -> None:
        self._write_route("-", route)

    def _write_route(self, op: str, route: Route) -> None:
        key = f"backend:{route.backend}"
        try:
            if op == "+":
                self.redis.hset(key, route.address, SCORE)
            else:
                self.redis.hdel(key, route.address)
        except redis.RedisError as error:
            logger.warning("cannot write %s %s %s (%s); the next sweep will",
                           op, key, route.address, error)
            return
        self._made(Change(op, f"{key} {route.address}"), route.service, route.container_id)

    def on_services_changed(self, sender: Any, *, retired: DesiredState, **kw: Any) -> None:
        """Empty what retired services held: owned addresses leave their old backends,
        and an old frontend key goes if it still names the old backend. What the Redx
        Redis does not take now is retried at every sweep until it does."""
        for backend in retired.backends:
            self.retiring_backends[backend] = retired.ownership
        self.retiring_frontends.update(retired.frontends)
        self._retire()

    def _retire(self) -> None:
        try:
            for backend in sorted(self.retiring_backends):
                ownership = self.retiring_backends[backend]
                servers = self.redis.hgetall(f"backend:{backend}")
                owned = sorted(a for a in servers if not a.startswith("_") and ownership.owns(backend, a))
                if owned:
                    self.redis.hdel(f"backend:{backend}", *owned)
                del self.retiring_backends[backend]
                for address in owned:
                    self._made(Change("-", f"backend:{backend} {address}"))
            for key in sorted(self.retiring_frontends):
                backend = self.retiring_frontends[key]
                deleted = self._delete_if_names(keys=[f"frontend:{key}"], args=[backend])
                del self.retiring_frontends[key]
                if deleted:
                    self._made(Change("-", f"frontend:{key} {backend}"))
        except redis.RedisError as error:
            logger.warning("Redx Redis %s did not take a retirement (%s); retrying at the next sweep: "
                           "%s", self.config.nginx_redis.display, error,
                           ", ".join([f"backend:{b}" for b in sorted(self.retiring_backends)]
                                     + [f"frontend:{k}" for k in sorted(self.retiring_frontends)]))

    def plan(self, desired: DesiredState) -> tuple[list[Change], list[tuple[str, str, str]]]:
        """Compare ``desired`` with what the Redx Redis holds, in one round trip.
        Returns the change lines and the writes (``set``/``hset``/``hdel``) they need.
        A key Redis refuses to read (of the wrong type, say) is left alone and
        reported; every other key is reconciled."""
        frontends = sorted(desired.frontends)
        backends = sorted(desired.backends)
        pipe = self.redis.pipeline(transaction=False)
        for key in frontends:
            pipe.get(f"frontend:{key}")
        for name in backends:
            pipe.hgetall(f"backend:{name}")
        replies = pipe.execute(raise_on_error=False)
        changes: list[Change] = []
        writes: list[tuple[str, str, str]] = []
        for key, held in zip(frontends, replies[:len(frontends)]):
            if isinstance(held, Exception):
                self._key_error(f"frontend:{key}", held)
                continue
            wanted = desired.frontends[key]
            if held != wanted:
                if held is not None:
                    logger.warning("frontend:%s named backend %r; setting it to %r",
                                   key, held, wanted)
                changes.append(Change("+", f"frontend:{key} {wanted}"))
                writes.append(("set", f"frontend:{key}", wanted))
        for name, held in zip(backends, replies[len(frontends):]):
            if isinstance(held, Exception):
                self._key_error(f"backend:{name}", held)
                continue
            wanted = desired.backends[name]
            for address in sorted(wanted - set(held)):
                changes.append(Change("+", f"backend:{name} {address}"))
                writes.append(("hset", f"backend:{name}", address))
            for address in sorted(held):
                if (address not in wanted and not address.startswith("_")
                        and desired.ownership.owns(name, address)):
                    changes.append(Change("-", f"backend:{name} {address}"))
                    writes.append(("hdel", f"backend:{name}", address))
        return changes, writes

    def _key_error(self, key: str, error: Exception) -> None:
        logger.error("%s cannot be reconciled (%s); its service is skipped, the others go on",
                     key, error)
        signals.send(signals.redx_key_failed, self, key=key, error=str(error))

    def on_sweep(self, sender: Any, *, desired: DesiredState, apply: bool = True,
                 **kw: Any) -> list[Change]:
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
        """Plan, and with ``apply`` write, in one pipeline; a write Redis refuses is
        reported and left out of the changes made."""
        changes, writes = self.plan(desired)
        if apply and writes:
            pipe = self.redis.pipeline(transaction=False)
            for op, key, value in writes:
                if op == "set":
                    pipe.set(key, value)
                elif op == "hset":
                    pipe.hset(key, value, SCORE)
                else:
                    pipe.hdel(key, value)
            replies = pipe.execute(raise_on_error=False)
            made = []
            for change, (_, key, _), reply in zip(changes, writes, replies):
                if isinstance(reply, Exception):
                    self._key_error(key, reply)
                    continue
                self._made(change)
                made.append(change)
            return made
        return changes

    def stop(self) -> None:
        self.redis.close()
