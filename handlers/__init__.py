"""Handlers: the reactions to Warden's signals.

A handler is a small class with no-op hooks; subclass :class:`Handler` and override the
ones you need. Built-in handlers and third-party ones alike are found through the
entry-point group ``warden.handlers`` and enabled by name in the config's ``handlers``.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any

from warden import signals
from warden.config import Config
from warden.errors import ConfigError
from warden.model import Change

logger = logging.getLogger(__name__)

#: built-in handlers that belong to the Manager: idle under ``warden registrar``
MANAGER_HANDLERS = frozenset({"ecs"})

#: hook method name -> the signal it receives
HOOKS = {
    "on_container_changed": signals.container_changed,
    "on_route_added": signals.route_added,
    "on_route_removed": signals.route_removed,
    "on_enrolment_changed": signals.enrolment_changed,
    "on_services_changed": signals.services_changed,
    "on_sweep": signals.sweep,
    "on_change_made": signals.change_made,
    "on_handler_error": signals.handler_error,
    "on_leadership_gained": signals.leadership_gained,
    "on_leadership_lost": signals.leadership_lost,
    "on_scaling_pass": signals.scaling_pass,
    "on_scaled": signals.scaled,
    "on_metric_failed": signals.metric_failed,
    "on_host_draining": signals.host_draining,
    "on_aws_event": signals.aws_event,
}


class Handler:
    """Base of every handler. Each ``on_*`` hook receives one signal as
    ``(sender, **kw)`` (see :mod:`warden.signals` for the keywords); only the hooks a
    subclass overrides are connected."""

    #: the name it is enabled by in the config (its entry-point name)
    name = ""
    #: the commands it works under: ``registrar``, ``manager``
    roles = frozenset({"registrar", "manager"})

    def __init__(self, config: Config) -> None:
        self.config = config

    def start(self) -> None:
        """Start any thread of the handler's own."""

    def stop(self) -> None:
        """Stop the handler's threads; called once at shutdown."""

    def threads(self) -> list[Any]:
        """The handler's own long-running threads, watched by ``/healthz``."""
        return []

    def on_container_changed(self, sender: Any, **kw: Any) -> None:
        """A Docker event changed a container."""

    def on_route_added(self, sender: Any, **kw: Any) -> None:
        """A server should be in a Redx backend."""

    def on_route_removed(self, sender: Any, **kw: Any) -> None:
        """A server should leave a Redx backend."""

    def on_enrolment_changed(self, sender: Any, **kw: Any) -> None:
        """This instance should join or leave a load balancer or target group."""

    def on_services_changed(self, sender: Any, **kw: Any) -> None:
        """The service descriptions changed."""

    def on_sweep(self, sender: Any, **kw: Any) -> list[Change]:
        """Reconcile the handler's store with ``desired``; return the changes."""
        return []

    def on_change_made(self, sender: Any, **kw: Any) -> None:
        """Some handler changed a store."""

    def on_handler_error(self, sender: Any, **kw: Any) -> None:
        """A receiver raised."""

    def on_leadership_gained(self, sender: Any, **kw: Any) -> None:
        """This instance became the leader."""

    def on_leadership_lost(self, sender: Any, **kw: Any) -> None:
        """This instance stopped leading."""

    def on_scaling_pass(self, sender: Any, **kw: Any) -> Any:
        """The leader asks for one scaling pass for a service."""

    def on_scaled(self, sender: Any, **kw: Any) -> None:
        """A scaling pass changed a task count."""

    def on_metric_failed(self, sender: Any, **kw: Any) -> None:
        """A metric could not be read; the count holds."""

    def on_host_draining(self, sender: Any, **kw: Any) -> None:
        """This host is being drained."""

    def on_aws_event(self, sender: Any, **kw: Any) -> None:
        """An AWS event arrived through EventBridge and SQS."""

    def _overridden(self) -> list[str]:
        return [hook for hook in HOOKS
                if getattr(type(self), hook) is not getattr(Handler, hook)]

    def connect(self) -> None:
        """Connect the overridden hooks (strongly: blinker silently drops weakly held
        receivers)."""
        for hook in self._overridden():
            HOOKS[hook].connect(getattr(self, hook), weak=False)

    def disconnect(self) -> None:
        """Undo :meth:`connect`."""
        for hook in self._overridden():
            HOOKS[hook].disconnect(getattr(self, hook))


def load_handlers(config: Config, roles: frozenset[str]) -> list[Handler]:
    """Instantiate, once each, the handlers the config enables that work under any of
    ``roles`` (the running command's: ``registrar``, ``manager``, or both for ``run``),
    or raise :class:`ConfigError` naming one that cannot be found or loaded."""
    found = {ep.name: ep for ep in entry_points(group="warden.handlers")}
    handlers = []
    names = list(config.handlers)
    if (config.alerts or {}) and "alerts" not in names:
        # Alerts configured but not listed: an operator who set a webhook wants it used.
        names.append("alerts")
    for name in names:
        if "manager" not in roles and name in MANAGER_HANDLERS:
            continue
        if name not in found:
            if name in MANAGER_HANDLERS:
                continue
            raise ConfigError(f"handler {name!r}: no entry point of that name in group "
                              f"warden.handlers (is its package installed?)")
        try:
            cls = found[name].load()
        except Exception as error:  # noqa: BLE001 - any import failure is the plugin's
            raise ConfigError(f"handler {name!r} failed to load from "
                              f"{found[name].value}: {type(error).__name__}: {error}") from None
        if not (isinstance(cls, type) and issubclass(cls, Handler)):
            raise ConfigError(f"handler {name!r}: {found[name].value} is not a Handler subclass")
        if not roles & cls.roles:
            continue
        handlers.append(cls(config))
    return handlers
