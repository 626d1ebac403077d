"""The Redis pub/sub subscriber: reads the central Redis's ``warden:*`` channels and
emits ``control_received`` for each valid message, ``control_rejected`` for the rest.

Pub/sub is at-most-once: a message sent while this reconnects is lost, which is why
messages are only nudges and the keys stay the truth.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import redis

from warden import signals
from warden.control import CHANNELS, ControlCodec, Rejected
from warden.threads import ConnectionLoop

logger = logging.getLogger(__name__)


def open_subscription(client: redis.Redis, channels: tuple[str, ...],
                      ignore_subscribe_messages: bool = False) -> tuple[redis.Redis, Any]:
    """``client`` and its pub/sub, subscribed to ``channels`` (the client is closed when
    subscribing fails)."""
    try:
        pubsub = client.pubsub(ignore_subscribe_messages=ignore_subscribe_messages)
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
    message to ignore: it is logged and counted like any other."""

    backoff_initial = 0.2
    backoff_cap = 10.0
    what = "control channels"
    lost = (redis.RedisError,)

    def __init__(self, client_factory: Callable[[], redis.Redis], codec: ControlCodec,
                 extra: Optional[dict[str, Callable[[Any], None]]] = None,
                 channels: tuple[str, ...] = tuple(CHANNELS)) -> None:
        super().__init__("warden-pubsub")
        self.client_factory = client_factory
        self.codec = codec
        #: the control channels listened to (all of them by default)
        self.channels = channels
        #: channel -> callback for channels that are not control channels
        self.extra = dict(extra or {})

    def _dispatch(self, channel: str, data: Any) -> None:
        try:
            if channel in self.extra:
                # Extra channels check their messages with the same codec, and raise
                # Rejected the same way.
                self.extra[channel](data)
                return
            message = self.codec.decode(channel, data)
        except Rejected as reason:
            logger.warning("ignored a message on %s: %s", channel, reason)
            signals.send(signals.control_rejected, self, channel=channel, reason=str(reason))
            return
        signals.send(signals.control_received, self, message=message)

    def open(self) -> Any:
        return open_subscription(self.client_factory(), (*self.channels, *self.extra),
                                 ignore_subscribe_messages=True)

    def close(self, connection: Any) -> None:
        close_subscription(connection)

    def reconnected(self) -> None:
        logger.info("control channels resubscribed")

    def serve(self, connection: Any) -> None:
        _, pubsub = connection
        self.held()
        while not self.stopping:
            item = pubsub.get_message(timeout=0.2)
            if item is None or item.get("type") != "message":
                continue
            channel = item["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            try:
                self._dispatch(channel, item["data"])
            except Exception:  # noqa: BLE001 - one bad message never ends the loop
                logger.exception("handling a message on %s failed", channel)
