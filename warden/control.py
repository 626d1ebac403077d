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
import math
import re
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
           now: Optional[float] = None, db: Optional[int] = None) -> str:
    """A message ready to publish on ``warden:<kind>``; ``db``, the central Redis
    database of the sender's cluster, binds it (and its signature) to that cluster:
    pub/sub channels are shared by every database of a Redis server."""
    message: dict[str, Any] = {"type": kind, "instanceId": instance_id, "az": az or "",
                               "epoch": int(epoch), "ts": round(now if now is not None else time.time(), 3)}
    if db is not None:
        message["db"] = int(db)
    if secret:
        message = sign(message, secret)
    return json.dumps(message, separators=(",", ":"))


#: a signature is HMAC-SHA256 in lower-case hex
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
#: ``warden:metric``: nudges a scaling pass; not one of the control channels above
METRIC_CHANNEL = "warden:metric"


class ControlCodec:
    """Parses and checks received messages on every channel, ``warden:metric``
    included, counting the rejected ones by reason (a short snake_case word)."""

    def __init__(self, secrets: Any, max_skew_seconds: float, db: Optional[int] = None) -> None:
        #: every secret that verifies (one string, a sequence, or none)
        self.secrets: tuple[str, ...] = ((secrets,) if isinstance(secrets, str) else tuple(secrets or ()))
        #: the signing secret, or "" when messages are not signed
        self.secret = self.secrets[0] if self.secrets else ""
        self.max_skew = max_skew_seconds
        #: this cluster's central Redis database: a message naming another is another
        #: cluster's (None: not checked)
        self.db = db
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self._highest_epoch = 0
        self._lock = threading.Lock()

    @classmethod
    def for_config(cls, config: Any) -> "ControlCodec":
        """The codec of ``config``'s cluster: its secrets, its lease as the allowed skew,
        its central database."""
        return cls(config.control_secrets, config.lease_seconds, config.service_management_redis.db)

    def decode(self, channel: str, payload: Any, now: Optional[float] = None) -> ControlMessage:
        """The message, or :class:`Rejected` (counted)."""
        return self._counted(self._decode, channel, payload, now)

    def decode_metric(self, payload: Any, services: frozenset[str],
                      now: Optional[float] = None) -> Optional[str]:
        """A ``warden:metric`` nudge: the service it names, or None for every service;
        :class:`Rejected` (counted) when it must be ignored.

        ``{"type": "metric", "service": NAME}`` (+ ``sig`` and ``ts`` when a secret is
        set); without a secret also a bare service name, and anything else means every
        service."""
        return self._counted(self._decode_metric, services, payload, now)

    def _counted(self, decode: Any, first: Any, payload: Any, now: Optional[float]) -> Any:
        try:
            result = decode(first, payload, time.time() if now is None else now)
        except Rejected as reason:
            with self._lock:
                self.rejected[str(reason)] += 1
            raise
        with self._lock:
            self.accepted += 1
        return result

    def _text(self, payload: Any) -> str:
        if isinstance(payload, bytes):
            if len(payload) > MAX_PAYLOAD:
                raise Rejected("too_large")
            try:
                payload = payload.decode()
            except UnicodeDecodeError:
                raise Rejected("not_utf8") from None
        if not isinstance(payload, str) or len(payload) > MAX_PAYLOAD:
            raise Rejected("too_large")
        return payload

    def _json(self, text: str) -> dict:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise Rejected("not_json") from None
        if not isinstance(data, dict):
            raise Rejected("not_object")
        return data

    def _verify(self, data: dict, now: float) -> None:
        """The signature and a fresh time, when a secret is set."""
        if not self.secret:
            return
        sig = data.get("sig")
        if sig is None:
            raise Rejected("unsigned")
        if not isinstance(sig, str) or not _SIGNATURE.fullmatch(sig):
            raise Rejected("bad_signature")
        try:
            body = canonical(data)
        except (ValueError, TypeError):  # NaN and the like cannot be signed
            raise Rejected("bad_signature") from None
        # Any secret in force verifies: a rotation adds the new one everywhere first.
        if not any(hmac.compare_digest(sig, hmac.new(secret.encode(), body, hashlib.sha256).hexdigest())
                   for secret in self.secrets):
            raise Rejected("bad_signature")
        if abs(now - _timestamp(data.get("ts"))) > self.max_skew:
            raise Rejected("stale_ts")

    def _decode(self, channel: str, payload: Any, now: float) -> ControlMessage:
        data = self._json(self._text(payload))
        kind = CHANNELS.get(channel)
        if kind is None or data.get("type") != kind:
            raise Rejected("wrong_type")
        instance_id, az, epoch, ts = (data.get("instanceId"), data.get("az", ""),
                                      data.get("epoch"), data.get("ts"))
        if not isinstance(instance_id, str) or not instance_id or not isinstance(az, str):
            raise Rejected("bad_instance")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch < 2 ** 63:
            raise Rejected("bad_epoch")
        when = _timestamp(ts)
        self._verify(data, now)
        self._check_cluster(data)
        if self.secret:
            with self._lock:
                if kind == "heartbeat" and epoch < self._highest_epoch:
                    raise Rejected("old_epoch")
                if kind == "heartbeat":
                    self._highest_epoch = max(self._highest_epoch, epoch)
        return ControlMessage(kind, instance_id, az, epoch, when)

    def _check_cluster(self, data: dict) -> None:
        """A message of another cluster (another database on the same Redis server) is
        refused. A signed one must name its cluster; an unsigned one without ``db``
        (a Warden of before it was bound) is taken."""
        if self.db is None:
            return
        db = data.get("db")
        if db is None and not self.secret:
            return
        if not isinstance(db, int) or isinstance(db, bool) or db != self.db:
            raise Rejected("other_cluster")

    def _decode_metric(self, services: frozenset[str], payload: Any, now: float) -> Optional[str]:
        text = self._text(payload)
        if not self.secret:
            try:
                data: Any = json.loads(text)
            except (ValueError, RecursionError):
                data = None
            if not isinstance(data, dict):
                return text.strip() if text.strip() in services else None
            if data.get("type") != "metric":
                return None
        else:
            data = self._json(text)
            # A signed message of another type (a heartbeat) is no nudge, and a signed
            # nudge needs a fresh time: without one it would replay for ever.
            if data.get("type") != "metric":
                raise Rejected("wrong_type")
        self._verify(data, now)
        self._check_cluster(data)
        name = data.get("service")
        return name if isinstance(name, str) and name in services else None


def _timestamp(value: Any) -> float:
    """``ts``: Unix time in seconds, a finite number in a sane range; else
    :class:`Rejected` (a 400-digit integer or NaN never reaches the arithmetic)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise Rejected("bad_ts")
    if isinstance(value, int) and not 0 <= value < 2 ** 53:
        raise Rejected("bad_ts")
    number = float(value)
    if not math.isfinite(number) or not 0 <= number < 2 ** 53:
        raise Rejected("bad_ts")
    return number
