"""The alerts handler: POSTs to a webhook for the event kinds an operator chose.

Config: ``"alerts": {"webhookUrl": "https://...", "events": [...], "template": "...",
"headers": {...}}``. Conditions alert twice: once when they start (``status``
``firing``) and once when they clear (``resolved``), never once per pass: a service's
metric that cannot be read, a service's scaling pass whose ECS calls fail. Events
alert once (``status`` ``event``): leadership changes, scaling, a drain, route changes;
a handler error alerts once per receiver and signal in each quiet period, its repeats
counted. Without a ``template`` the body is a JSON object of the alert's fields
(:data:`warden.config.ALERT_FIELDS` lists them); with one, the template (``string.Template``: ``$text``, ``${service}``) is the body, each
field inserted escaped for a JSON string, so one handler speaks Slack, Teams or the
PagerDuty Events API. Alerts are sent from the handler's own thread (a slow webhook
blocks nothing), retried with backoff, then dropped and counted.

The conditions the leader judges (a metric, a scaling pass) are the cluster's, not this
host's: while firing they are also held in the central Redis hash
``warden:alerts:firing`` (condition key -> JSON ``{"since", "instanceId"}``). A new
leader takes them over when it gains leadership, so it resolves what a leader before it
fired (even one that crashed) once the condition is over; a service removed from the
files resolves its conditions.
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import string
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Optional

import redis

from warden.config import Config, render_alert
from warden.handlers import Handler
from warden.runtime.logs import Throttle
from warden.runtime.threads import StoppableThread

logger = logging.getLogger(__name__)

DEFAULT_EVENTS = ("leadership", "errors", "scaling", "drain")
#: most alerts waiting to be sent; past that, new ones are dropped (and counted)
QUEUE_LIMIT = 1000
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is an answer, not a new address: following it would send the alert, and
    the operator's headers (an ``Authorization``), to a host nobody configured."""

    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None


#: opens webhook requests without following redirects
_OPENER = urllib.request.build_opener(_NoRedirect)

#: the central Redis hash of the leader's conditions firing now
FIRING = "warden:alerts:firing"
#: PagerDuty's severities, by kind of alert
SEVERITY = {"errors": "error", "drain": "warning", "leadership": "info", "scaling": "info", "routes": "info"}


@dataclass(frozen=True)
class AlertSettings:
    """The ``alerts`` key as the handler uses it; replaced whole at a SIGHUP, so a POST
    in flight sends one version of it, never a mix."""

    url: Optional[str]
    events: frozenset
    template: Optional[string.Template]
    headers: dict

    @classmethod
    def of(cls, alerts: Optional[dict]) -> "AlertSettings":
        settings = {k.lower(): v for k, v in (alerts or {}).items()}
        return cls(url=settings.get("webhookurl"),
                   events=frozenset(str(e).lower() for e in settings.get("events") or DEFAULT_EVENTS),
                   template=string.Template(settings["template"]) if settings.get("template") else None,
                   headers={"Content-Type": "application/json", **(settings.get("headers") or {})})


class AlertsHandler(Handler):
    """Turns signals into webhook alerts."""

    name = "alerts"
    roles = frozenset({"registrar", "manager"})

    #: seconds to wait between attempts; one attempt more than there are delays
    retry_delays = (0.5, 2.0, 5.0)
    #: seconds one POST may take
    timeout = 5.0
    #: seconds in which a repeated handler error is counted, not sent again
    quiet_seconds = 600.0

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.settings = AlertSettings.of(config.alerts)
        self.queue: "queue.Queue[Optional[dict]]" = queue.Queue(QUEUE_LIMIT)
        self.sent = 0
        self.dropped = 0
        #: conditions firing now: key -> [since (monotonic), repeats]
        self.firing: dict[str, list] = {}
        #: the central Redis (in a process that runs the Manager), where the leader's
        #: conditions outlive its leadership
        self.central: Any = None
        self._lock = threading.Lock()
        #: events that may repeat, let through once per quiet period
        self._quiet = Throttle(self.quiet_seconds)
        self._sender = _Sender(self)
        # Alerts queued before the stop are sent first.
        self.workers = (self._sender,)
        if not self.settings.url:
            logger.warning("alerts handler enabled without alerts.webhookUrl: alerts are logged only")

    def register(self, telemetry: Any) -> None:
        telemetry.counter_source("warden_alerts_sent", "Alerts the webhook accepted", lambda: self.sent)
        telemetry.counter_source("warden_alerts_dropped",
                                 "Alerts dropped: the queue was full, or the webhook kept failing",
                                 lambda: self.dropped)

    def alert(self, kind: str, event: str, text: str, status: str = "event", key: str = "",
              **details: Any) -> None:
        """Queue one alert of ``kind`` if the operator asked for that kind."""
        if kind not in self.settings.events:
            return
        who = f"[warden {self.config.instance_id}]" if self.config.instance_id else "[warden]"
        body = {"kind": kind, "event": event, "status": status, "key": key or f"warden:{event}",
                "action": "resolve" if status == "resolved" else "trigger",
                "text": f"{who} {text}", "severity": SEVERITY.get(kind, "info"),
                "instanceId": self.config.instance_id, **details}
        logger.info("alert (%s): %s", status, text)
        try:
            self.queue.put_nowait(body)
        except queue.Full:
            self.dropped += 1
            logger.warning("alert dropped, %d waiting already: %s", QUEUE_LIMIT, text)

    def use_central(self, client: Any) -> None:
        self.central = client

    def _shared(self, operation: str, *args: Any) -> Any:
        """One command on the central hash of firing conditions; None when there is no
        central Redis here or it does not answer (the condition is then only this
        process's until the next change)."""
        if self.central is None:
            return None
        try:
            return getattr(self.central, operation)(FIRING, *args)
        except redis.RedisError as error:
            logger.warning("cannot %s %s in the central Redis: %s", operation, FIRING, error)
            return None

    def condition(self, kind: str, event: str, key: str, text: str, **details: Any) -> None:
        """A condition seen (again): alert only when it starts."""
        with self._lock:
            seen = self.firing.get(key)
            if seen is not None:
                seen[1] += 1
                return
            self.firing[key] = [time.monotonic(), 0]
        record = json.dumps({"since": round(time.time(), 3), "instanceId": self.config.instance_id})
        if self._shared("hsetnx", key, record) == 0:
            return  # a leader before this one fired it, and it still holds: nothing new
        self.alert(kind, event, text, status="firing", key=key, **details)

    def cleared(self, kind: str, event: str, key: str, text: str, **details: Any) -> None:
        """A condition that held is over: alert that it cleared, with how long it held."""
        with self._lock:
            seen = self.firing.pop(key, None)
        if seen is not None:
            self._shared("hdel", key)
            lasted = time.monotonic() - seen[0]
            self.alert(kind, event, f"{text} (after {lasted:.0f}s, {seen[1] + 1} failed passes)",
                       status="resolved", key=key, seconds=round(lasted, 1), count=seen[1] + 1, **details)

    def _take_over(self) -> None:
        """This instance leads: the conditions a leader before it left firing are its
        own now, each since the time it was first fired."""
        held = self._shared("hgetall") or {}
        now_wall, now = time.time(), time.monotonic()
        with self._lock:
            for raw_key, raw in held.items():
                key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
                try:
                    since = float(json.loads(raw)["since"])
                except (ValueError, KeyError, TypeError):
                    since = now_wall
                self.firing.setdefault(key, [now - max(0.0, now_wall - since), 0])

    def once_per_quiet_period(self, kind: str, event: str, key: str, text: str, **details: Any) -> None:
        """An event that may repeat: sent once per ``quiet_seconds``; the next one sent
        says how many were held back."""
        admitted = self._quiet.admit(key)
        if admitted is None:
            return
        held, _ = admitted
        if held:
            text += f" (x{held + 1} since the last alert)"
        self.alert(kind, event, text, key=key, count=held + 1, **details)

    def encode(self, body: dict, settings: Optional[AlertSettings] = None) -> bytes:
        """The request body: the JSON object, or the operator's template over it."""
        template = (settings or self.settings).template
        if template is None:
            return json.dumps(body, default=str).encode()
        return render_alert(template, body).encode()

    def post(self, body: dict) -> bool:
        """One POST of ``body``, retried briefly; True when the webhook took it."""
        settings = self.settings
        if not settings.url:
            return True
        data = self.encode(body, settings)
        for attempt, delay in enumerate((*self.retry_delays, None)):
            request = urllib.request.Request(settings.url, data=data, method="POST", headers=settings.headers)
            try:
                with _OPENER.open(request, timeout=self.timeout) as response:
                    if 200 <= response.status < 300:
                        self.sent += 1
                        return True
            except urllib.error.HTTPError as error:
                location = error.headers.get("Location") if error.headers else None
                reason = (f"HTTP {error.code} redirect to {location}, not followed" if location
                          else f"HTTP {error.code}")
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

    def on_settings_reloaded(self, sender: Any, *, config: Config, keys: Any, **kw: Any) -> None:
        # SIGHUP: the webhook, events, template and headers as the file says now; the
        # alerts already queued go out under the new ones.
        if "alerts" in {key.lower() for key in keys}:
            self.settings = AlertSettings.of(config.alerts)
            logger.info("alerts: %s, for %s", "webhook set" if self.settings.url else "no webhook (logged only)",
                        ", ".join(sorted(self.settings.events)))

    def on_leadership_gained(self, sender: Any, *, instance_id: str, epoch: int, **kw: Any) -> None:
        self._take_over()
        # Gaining leadership means enough replicas acknowledged the claim.
        self.cleared("errors", "acting-held", "warden:acting-held", f"{instance_id} acts (epoch {epoch})")
        self.alert("leadership", "leadership-gained", f"{instance_id} is now the leader (epoch {epoch})",
                   epoch=epoch)

    def on_leadership_lost(self, sender: Any, *, instance_id: str, epoch: Any, reason: str, **kw: Any) -> None:
        # The conditions stay firing in the central Redis: the next leader resolves them.
        with self._lock:
            self.firing.clear()
        self.alert("leadership", "leadership-lost",
                   f"{instance_id} stopped leading (epoch {epoch}): {reason}", epoch=epoch, reason=reason)

    def on_services_reloaded(self, sender: Any, *, services: Any, **kw: Any) -> None:
        # A service removed from the files has no condition any more.
        names = {s.name for s in services}
        for event, text in (("metric-failed", "service removed"), ("scaling-failed", "service removed")):
            prefix = f"warden:{event}:"
            for key in [k for k in list(self.firing) if k.startswith(prefix) and k[len(prefix):] not in names]:
                service = key[len(prefix):]
                self.cleared("errors", event, key, f"{service}: {text}", service=service)

    def on_acting_changed(self, sender: Any, *, instance_id: str, epoch: Any, acting: bool, reason: str,
                          **kw: Any) -> None:
        if acting:
            self.cleared("errors", "acting-held", "warden:acting-held",
                         f"{instance_id} acts again (epoch {epoch}): replicas acknowledge", epoch=epoch)
        else:
            self.condition("errors", "acting-held", "warden:acting-held",
                           f"{instance_id} leads but holds every action (epoch {epoch}): {reason}",
                           epoch=epoch, reason=reason)

    def on_claim_abandoned(self, sender: Any, *, instance_id: str, epoch: Any, reason: str, **kw: Any) -> None:
        self.alert("errors", "claim-abandoned", f"{instance_id} handed back epoch {epoch} before acting: {reason}",
                   key=f"warden:claim-abandoned:{instance_id}", epoch=epoch, reason=reason)

    def on_scaled(self, sender: Any, *, service: str, metric: float, desired: int, running: int,
                  started: int, stopped: int, **kw: Any) -> None:
        self.alert("scaling", "scaled",
                   f"{service}: metric {metric:g}, {running} -> {desired} tasks "
                   f"(started {started}, stopped {stopped})",
                   service=service, metric=metric, desired=desired, running=running,
                   started=started, stopped=stopped)

    def on_metric_failed(self, sender: Any, *, service: str, error: str, **kw: Any) -> None:
        self.condition("errors", "metric-failed", f"warden:metric-failed:{service}",
                       f"{service}: metric unreadable, count held: {error}", service=service, error=error)

    def on_scaling_pass(self, sender: Any, *, service: Any, **kw: Any) -> None:
        # The metric was read: a metric failure of the service is over.
        self.cleared("errors", "metric-failed", f"warden:metric-failed:{service.name}",
                     f"{service.name}: metric readable again", service=service.name)

    def on_scaling_failed(self, sender: Any, *, service: str, error: str, **kw: Any) -> None:
        self.condition("errors", "scaling-failed", f"warden:scaling-failed:{service}",
                       f"{service}: scaling failed, an ECS call of the pass failed: {error}",
                       service=service, error=error)

    def on_scaling_checked(self, sender: Any, *, service: str, **kw: Any) -> None:
        self.cleared("errors", "scaling-failed", f"warden:scaling-failed:{service}",
                     f"{service}: scaling works again", service=service)

    def on_host_draining(self, sender: Any, *, reason: str, **kw: Any) -> None:
        self.alert("drain", "host-draining", f"this host is draining: {reason}",
                   key=f"warden:host-draining:{self.config.instance_id}", reason=reason)

    def on_handler_error(self, sender: Any, *, signal_name: str, receiver: str, error: Any, **kw: Any) -> None:
        self.once_per_quiet_period("errors", "handler-error", f"warden:handler-error:{receiver}:{signal_name}",
                                   f"{receiver} failed on {signal_name}: {error}",
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
