"""The Redis pub/sub subscriber: reads the central Redis's ``warden:*`` channels and
emits ``control_received`` for each valid message, ``control_rejected`` for the rest.

Pub/sub is at-most-once: a message sent while this reconnects is lost, which is why
messages are only nudges and the keys stay the truth.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional

import redis

from warden import signals
from warden.control import CHANNELS, ControlCodec, Rejected
from warden.threads import Backoff, StoppableThread

logger = logging.getLogger(__name__)


class ControlSubscriber(StoppableThread):
    """Listens on the control channels (and any extra ones) of the central Redis. An
    extra channel's callback gets the raw payload and raises :class:`Rejected` for a
    message to ignore: it is logged and counted like any other."""

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
        #: set while subscribed (for /healthz)
        self.connected = threading.Event()
        self.reconnects = 0

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

    def run(self) -> None:
        backoff = Backoff(0.2, 10.0)
        first = True
        while not self.stopping:
            client = None
            try:
                client = self.client_factory()
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(*self.channels, *self.extra)
                self.connected.set()
                if not first:
                    self.reconnects += 1
                    logger.info("control channels resubscribed")
                first = False
                backoff.reset()
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
                pubsub.close()
            except redis.RedisError as error:
                self.connected.clear()
                if not self.stopping:
                    delay = backoff.next_delay()
                    logger.warning("control channels lost (%s); retrying in %.1fs", error, delay)
                    self.stop_event.wait(delay)
            finally:
                self.connected.clear()
                if client is not None:
                    client.close()
