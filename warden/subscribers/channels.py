"""The Redis pub/sub subscriber: reads the central Redis's ``warden:*`` channels and
emits ``control_received`` for each valid message, ``control_rejected`` for the rest.

Pub/sub is at-most-once: a message sent while this reconnects is lost, which is why
messages are only nudges and the keys stay the truth.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional

import redis

from warden import signals
from warden.control import CHANNELS, ControlCodec, Rejected
from warden.runtime.threads import ConnectionLoop

logger = logging.getLogger(__name__)


def open_subscription(client: redis.Redis, channels: tuple[str, ...]) -> tuple[redis.Redis, Any]:
    """``client`` and its pub/sub, subscribed to ``channels`` (the client is closed when
    subscribing fails)."""
    try:
        pubsub = client.pubsub()
        pubsub.subscribe(*channels)
    except redis.RedisError:
        client.close()
        raise
    return client, pubsub


def close_subscription(connection: tuple[redis.Redis, Any]) -> None:
    """Undo :func:`open_subscription`."""
    client, pubsub = connection
    pubsub.close()
    client.close()


class ControlSubscriber(ConnectionLoop):
    """Listens on the control channels (and any extra ones) of the central Redis. An
    extra channel's callback gets the raw payload and raises :class:`Rejected` for a
    message to ignore: it is logged and counted like any other.

    It says when its subscription is confirmed and when it is lost
    (``control_subscription``). A lost connection is opened again at once: the
    Manager's liveness channel is among the extra ones, and followers count a leader
    gone only when its channel stays empty for longer than a reconnect takes."""

    def explain(self, why: Any) -> str:
        from warden.runtime.central import describe

        return describe(why) if isinstance(why, BaseException) else f"unreachable ({why})"

    backoff_initial = 0.2
    #: a leader's liveness rides on this connection: back well within a lease
    backoff_cap = 2.0
    #: seconds without anything read before a PING asks the server whether it is still
    #: there (a leader's heartbeats keep a follower's connection busier than this, so
    #: it costs nothing in the steady state)
    quiet_seconds = 2.0
    #: seconds a PING may wait for its answer before the connection counts as lost
    ping_timeout = 2.0
    retry_at_once = True
    what = "control channels"
    lost = (redis.RedisError,)

    def __init__(self, client_factory: Callable[[], redis.Redis], codec: ControlCodec,
                 extra: Optional[dict[str, Callable[[Any], None]]] = None,
                 channels: tuple[str, ...] = tuple(CHANNELS),
                 connected: Optional[threading.Event] = None,
                 resubscribe: Optional[threading.Event] = None) -> None:
        super().__init__("warden-pubsub")
        if connected is not None:
            #: shared with whoever needs to know whether messages can be heard
            self.connected = connected
        #: set by whoever finds the subscriptions missing on the primary: the
        #: connection is opened again
        self.resubscribe = resubscribe if resubscribe is not None else threading.Event()
        self.client_factory = client_factory
        self.codec = codec
        #: the control channels listened to (all of them by default)
        self.channels = channels
        #: channel -> callback for channels that are not control channels
        self.extra = dict(extra or {})
        #: channels where another cluster's messages were already said (once a channel)
        self._other_cluster_said: set[str] = set()

    def _dispatch(self, channel: str, data: Any) -> None:
        try:
            if channel in self.extra:
                # Extra channels check their messages with the same codec, and raise
                # Rejected the same way.
                self.extra[channel](data)
                return
            message = self.codec.decode(channel, data)
        except Rejected as reason:
            # Another cluster on the same Redis server speaks every second: said once.
            once = str(reason) == "other_cluster"
            if once and channel in self._other_cluster_said:
                logger.debug("ignored a message on %s: %s", channel, reason)
            else:
                if once:
                    self._other_cluster_said.add(channel)
                logger.warning("ignored a message on %s: %s%s", channel, reason,
                               " (a message of another cluster: a Warden on another database of this "
                               "Redis server; said once)" if once else "")
            signals.send(signals.control_rejected, self, channel=channel, reason=str(reason))
            return
        signals.send(signals.control_received, self, message=message)

    def open(self) -> Any:
        self.resubscribe.clear()
        return open_subscription(self.client_factory(), (*self.channels, *self.extra))

    def close(self, connection: Any) -> None:
        close_subscription(connection)

    def reconnected(self) -> None:
        logger.info("control channels resubscribed")

    def serve(self, connection: Any) -> None:
        _, pubsub = connection
        confirmed, wanted = 0, len(self.channels) + len(self.extra)
        heard, pinged = time.monotonic(), None
        try:
            while not self.stopping:
                if self.resubscribe.is_set():
                    raise redis.ConnectionError("the primary holds none of its subscriptions")
                item = pubsub.get_message(timeout=0.5)
                now = time.monotonic()
                if item is None:
                    # A server that hung, or a partition, keeps the connection open and
                    # silent: nothing but an unanswered question tells.
                    if pinged is not None and now - pinged > self.ping_timeout:
                        raise redis.TimeoutError(f"no answer to PING within {self.ping_timeout:g}s")
                    if pinged is None and now - heard > self.quiet_seconds:
                        pubsub.ping()
                        pinged = now
                    continue
                heard, pinged = now, None
                if item.get("type") == "subscribe":
                    confirmed += 1
                    if confirmed == wanted:
                        self.held()
                        signals.send(signals.control_subscription, self, held=True)
                    continue
                if item.get("type") != "message":
                    continue
                channel = item["channel"]
                channel = channel.decode() if isinstance(channel, bytes) else channel
                try:
                    self._dispatch(channel, item["data"])
                except Exception:  # noqa: BLE001 - one bad message never ends the loop
                    logger.exception("handling a message on %s failed", channel)
        finally:
            if confirmed >= wanted:
                signals.send(signals.control_subscription, self, held=False)
