"""The alerts handler: POSTs JSON to a webhook for the event kinds an operator chose.

Config: ``"alerts": {"webhookUrl": "https://...", "events": ["leadership", "errors",
"scaling", "routes"]}`` (default: leadership, errors, scaling). Each alert carries a
human-readable ``text`` field, so a Slack-style incoming webhook shows it as is, plus
``kind``, ``event``, ``instanceId`` and the event's details. Alerts are queued and sent
from the handler's own thread: a slow webhook never blocks another handler. A failed
POST is retried briefly, then dropped with a log line.
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import urllib.error
import urllib.request
from typing import Any, Optional

from warden.config import Config
from warden.handlers import Handler
from warden.threads import StoppableThread

logger = logging.getLogger(__name__)

DEFAULT_EVENTS = ("leadership", "errors", "scaling")
#: most alerts waiting to be sent; past that, new ones are dropped (and counted)
QUEUE_LIMIT = 1000


class AlertsHandler(Handler):
    """Turns signals into webhook alerts."""

    name = "alerts"
    roles = frozenset({"registrar", "manager"})

    #: seconds to wait between attempts; one attempt more than there are delays
    retry_delays = (0.5, 2.0)
    #: seconds one POST may take
    timeout = 5.0

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        settings = {k.lower(): v for k, v in (config.alerts or {}).items()}
        self.url: Optional[str] = settings.get("webhookurl")
        self.events = frozenset(str(e).lower() for e in settings.get("events") or DEFAULT_EVENTS)
        self.queue: "queue.Queue[Optional[dict]]" = queue.Queue(QUEUE_LIMIT)
        self.sent = 0
        self.dropped = 0
        self._sender = _Sender(self)
        if not self.url:
            logger.warning("alerts handler enabled without alerts.webhookUrl: alerts are logged only")

    def start(self) -> None:
        self._sender.start()

    def threads(self) -> list[Any]:
        return [self._sender]

    def stop(self) -> None:
        self._sender.stop()
        if self._sender.ident is not None:
            self._sender.join(timeout=10)

    def register(self, telemetry: Any) -> None:
        telemetry.counter_source("warden_alerts_sent", "Alerts the webhook accepted", lambda: self.sent)
        telemetry.counter_source("warden_alerts_dropped",
                                 "Alerts dropped: the queue was full, or the webhook kept failing",
                                 lambda: self.dropped)

    def alert(self, kind: str, event: str, text: str, **details: Any) -> None:
        """Queue one alert of ``kind`` if the operator asked for that kind."""
        if kind not in self.events:
            return
        who = f"[warden {self.config.instance_id}]" if self.config.instance_id else "[warden]"
        body = {"kind": kind, "event": event, "text": f"{who} {text}",
                "instanceId": self.config.instance_id, **details}
        logger.info("alert: %s", text)
        try:
            self.queue.put_nowait(body)
        except queue.Full:
            self.dropped += 1
            logger.warning("alert dropped, %d waiting already: %s", QUEUE_LIMIT, text)

    def post(self, body: dict) -> bool:
        """One POST of ``body``, retried briefly; True when the webhook took it."""
        if not self.url:
            return True
        data = json.dumps(body, default=str).encode()
        for attempt, delay in enumerate((*self.retry_delays, None)):
            request = urllib.request.Request(self.url, data=data, method="POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    if 200 <= response.status < 300:
                        self.sent += 1
                        return True
            except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as error:
                reason = f"{type(error).__name__}: {error}"
            else:
                reason = f"HTTP {response.status}"
            if delay is None or self._sender.stop_event.wait(delay):
                self.dropped += 1
                logger.warning("alert dropped after %d attempts (%s): %s", attempt + 1, reason,
                               body.get("text"))
                return False
        return False

    # -- signals -----------------------------------------------------------------

    def on_leadership_gained(self, sender: Any, *, instance_id: str, epoch: int, **kw: Any) -> None:
        self.alert("leadership", "leadership-gained", f"{instance_id} is now the leader (epoch {epoch})",
                   epoch=epoch)

    def on_leadership_lost(self, sender: Any, *, instance_id: str, epoch: Any, reason: str, **kw: Any) -> None:
        self.alert("leadership", "leadership-lost",
                   f"{instance_id} stopped leading (epoch {epoch}): {reason}", epoch=epoch, reason=reason)

    def on_scaled(self, sender: Any, *, service: str, metric: float, desired: int, running: int,
                  started: int, stopped: int, **kw: Any) -> None:
        self.alert("scaling", "scaled",
                   f"{service}: metric {metric:g}, {running} -> {desired} tasks "
                   f"(started {started}, stopped {stopped})",
                   service=service, metric=metric, desired=desired, running=running,
                   started=started, stopped=stopped)

    def on_metric_failed(self, sender: Any, *, service: str, error: str, **kw: Any) -> None:
        self.alert("errors", "metric-failed", f"{service}: metric unreadable, count held: {error}",
                   service=service, error=error)

    def on_scaling_failed(self, sender: Any, *, service: str, error: str, **kw: Any) -> None:
        self.alert("errors", "scaling-failed", f"{service}: an ECS call of the scaling pass failed: {error}",
                   service=service, error=error)

    def on_handler_error(self, sender: Any, *, signal_name: str, receiver: str, error: Any, **kw: Any) -> None:
        self.alert("errors", "handler-error", f"{receiver} failed on {signal_name}: {error}",
                   receiver=receiver, signal=signal_name, error=str(error))

    def on_change_made(self, sender: Any, *, change: Any, service: Optional[str] = None,
                       container_id: str = "", **kw: Any) -> None:
        self.alert("routes", "change", f"{change}" + (f" ({service})" if service else ""),
                   change=str(change), service=service, containerId=container_id[:12] or None)


class _Sender(StoppableThread):
    def __init__(self, handler: AlertsHandler) -> None:
        super().__init__("warden-alerts")
        self.handler = handler

    def on_stop(self) -> None:
        try:
            self.handler.queue.put_nowait(None)
        except queue.Full:
            pass

    def run(self) -> None:
        while not self.stopping:
            body = self.handler.queue.get()
            if body is None:
                break
            try:
                self.handler.post(body)
            except Exception as error:  # noqa: BLE001 - one bad reply never ends the sender
                self.handler.dropped += 1
                logger.warning("alert dropped (%s: %s): %s", type(error).__name__, error,
                               body.get("text"))
