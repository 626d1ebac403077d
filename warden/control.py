"""Control messages on the central Redis's pub/sub channels.

``warden:heartbeat``, ``warden:kill``, ``warden:election``, ``warden:drain`` carry JSON
``{"type", "instanceId", "az", "epoch", "ts"}`` (+ ``"sig"`` when a secret is set:
HMAC-SHA256, hex, over the message without ``sig`` as compact JSON with sorted keys).
Messages are nudges: the keys stay the truth. Anything malformed, unsigned, wrongly
signed or replayed is counted by reason and ignored, never fatal.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

#: channel -> the ``type`` its messages carry
CHANNELS = {f"warden:{kind}": kind for kind in ("heartbeat", "kill", "election", "drain")}
#: payloads longer than this are rejected unread
MAX_PAYLOAD = 4096


@dataclass(frozen=True)
class ControlMessage:
    """One accepted control message."""

    type: str
    instance_id: str
    az: str
    epoch: int
    ts: float


class Rejected(Exception):
    """A message that is ignored; the text is the reason counted."""


def canonical(message: dict) -> bytes:
    """The bytes a signature covers: compact JSON, sorted keys, without ``sig``."""
    body = {k: v for k, v in message.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign(message: dict, secret: str) -> dict:
    """``message`` with its ``sig``."""
    digest = hmac.new(secret.encode(), canonical(message), hashlib.sha256).hexdigest()
    return dict(message, sig=digest)


def encode(kind: str, instance_id: str, az: str, epoch: int, secret: Optional[str],
           now: Optional[float] = None) -> str:
    """A message ready to publish on ``warden:<kind>``."""
    message: dict[str, Any] = {"type": kind, "instanceId": instance_id, "az": az or "",
                               "epoch": int(epoch), "ts": round(now if now is not None else time.time(), 3)}
    if secret:
        message = sign(message, secret)
    return json.dumps(message, separators=(",", ":"))


class ControlCodec:
    """Parses and checks received messages, counting the rejected ones by reason."""

    def __init__(self, secret: Optional[str], max_skew_seconds: float) -> None:
        self.secret = secret
        self.max_skew = max_skew_seconds
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self._highest_epoch = 0
        self._lock = threading.Lock()

    def decode(self, channel: str, payload: Any, now: Optional[float] = None) -> ControlMessage:
        """The message, or :class:`Rejected` (counted)."""
        try:
            message = self._decode(channel, payload, time.time() if now is None else now)
        except Rejected as reason:
            with self._lock:
                self.rejected[str(reason)] += 1
            raise
        with self._lock:
            self.accepted += 1
        return message

    def _decode(self, channel: str, payload: Any, now: float) -> ControlMessage:
        if isinstance(payload, bytes):
            if len(payload) > MAX_PAYLOAD:
                raise Rejected("too large")
            try:
                payload = payload.decode()
            except UnicodeDecodeError:
                raise Rejected("not UTF-8") from None
        if not isinstance(payload, str) or len(payload) > MAX_PAYLOAD:
            raise Rejected("too large")
        try:
            data = json.loads(payload)
        except ValueError:
            raise Rejected("not JSON") from None
        if not isinstance(data, dict):
            raise Rejected("not a JSON object")
        kind = CHANNELS.get(channel)
        if kind is None or data.get("type") != kind:
            raise Rejected("type does not match the channel")
        instance_id, az, epoch, ts = (data.get("instanceId"), data.get("az", ""),
                                      data.get("epoch"), data.get("ts"))
        if not isinstance(instance_id, str) or not instance_id or not isinstance(az, str):
            raise Rejected("bad instanceId or az")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise Rejected("bad epoch")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool):
            raise Rejected("bad ts")
        if self.secret:
            sig = data.get("sig")
            if not isinstance(sig, str):
                raise Rejected("unsigned")
            expected = hmac.new(self.secret.encode(), canonical(data), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(sig, expected):
                raise Rejected("bad signature")
            if abs(now - ts) > self.max_skew:
                raise Rejected("replayed (stale ts)")
            with self._lock:
                if kind == "heartbeat" and epoch < self._highest_epoch:
                    raise Rejected("replayed (old epoch)")
                if kind == "heartbeat":
                    self._highest_epoch = max(self._highest_epoch, epoch)
        return ControlMessage(kind, instance_id, az, epoch, float(ts))
