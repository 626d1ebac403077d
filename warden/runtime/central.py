"""This process's connections to the central Redis: two at most, whatever it runs.

- ``commands``: one connection that every thread shares (a pool of one: a thread waits
  while another uses it). Its calls fail well within the lease: short socket timeouts
  and no hidden retries (redis-py's default retries could hide a dead Redis for about
  as long as a lease).
- One pub/sub connection, held by the control-channel subscriber
  (:class:`warden.subscribers.channels.ControlSubscriber`): every channel this process
  listens to, this instance's liveness channel included.

With Sentinels configured both find the current primary on every connect, so they
follow a failover; the subscriber then subscribes again and tells the others
(``control_subscription``), since anything published meanwhile was lost. A primary
that hangs instead of dying (a network partition) keeps the pub/sub connection open
on it: the Manager finds its own liveness channel empty where its commands go and asks
for a new one (``resubscribe``).
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from warden.config import Config


#: where an operator finds what Warden's central Redis user needs
ACL_DOC = "docs/redis-acl.md"

#: the oldest central Redis server Warden runs on (the entry and claim scripts check a
#: leader's commands with ``redis.acl_check_cmd``; the tests run on 7.0)
MIN_SERVER = (7, 0)


def version_problem(version: str) -> str:
    """Why a central Redis that reports ``redis_version`` ``version`` will not do, or
    "" when it will."""
    parts = version.split(".")
    try:
        found = tuple(int(p) for p in parts[:2])
    except ValueError:
        return f"reports version {version!r}, which Warden cannot read"
    if found < MIN_SERVER:
        return (f"is Redis {version}; Warden needs {'.'.join(map(str, MIN_SERVER))} or later "
                f"(see {ACL_DOC})")
    return ""


def refused(error: BaseException) -> bool:
    """The central Redis answered, and said no: a login or a permission it refuses
    (retrying soon changes nothing)."""
    return isinstance(error, (redis.AuthenticationError, redis.exceptions.NoPermissionError))


def describe(error: BaseException) -> str:
    """What went wrong with the central Redis, as a log line says it: a refused login
    or command as what it is, anything else as unreachable."""
    if isinstance(error, redis.AuthenticationError):
        return (f"refused the login ({error}): check serviceManagementRedisUsername and "
                f"serviceManagementRedisPassword, and {ACL_DOC}")
    if isinstance(error, redis.exceptions.NoPermissionError):
        return f"refused a command ({error}): {ACL_DOC} lists what Warden's user needs"
    return f"unreachable: {error}"


class Central:
    """The central Redis as this process reaches it."""

    def __init__(self, config: Config) -> None:
        self.address = config.service_management_redis
        self.display = self.address.display
        self.instance_id = config.instance_id or ""
        #: seconds a command may take (and a thread may wait for the connection)
        self.timeout = max(0.2, min(1.0, config.lease_seconds / 4))
        self.commands: redis.Redis = self.address.client(
            single=True, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False,
            client_name=f"warden-{self.instance_id}" if self.instance_id else None)
        #: set while the pub/sub connection's subscriptions are confirmed (the
        #: subscriber's ``connected``): messages can be heard
        self.subscribed = threading.Event()
        #: set when the server the commands reach holds none of this process's
        #: subscriptions although they are confirmed: the pub/sub connection sits on
        #: another server (an old primary that hung, or a replica now) and the
        #: subscriber opens it again
        self.resubscribe = threading.Event()

    #: seconds a pub/sub connect, and each reply of its handshake, may take: a server
    #: that accepts TCP and never answers (a hung primary, a partition right after the
    #: handshake) must not hold the subscriber, nor a stop, for ever
    subscriber_timeout = 2.0

    def subscriber_client(self) -> Any:
        """A client for the pub/sub connection (a new one at each reconnect). Every
        read has a timeout and nothing is retried inside redis-py: the subscriber's own
        loop reconnects, and its PING on a quiet connection finds a silent server."""
        # RESP2: redis-py's RESP3 reader formats and logs every pushed message at debug
        # level, taking the logging module's lock each time.
        return self.address.client(
            socket_connect_timeout=self.subscriber_timeout, socket_timeout=self.subscriber_timeout,
            health_check_interval=0, retry=Retry(NoBackoff(), 0), retry_on_timeout=False, protocol=2,
            client_name=f"warden-sub-{self.instance_id}" if self.instance_id else None)

    def close(self) -> None:
        self.commands.close()
