"""Handlers: the reactions to Warden's signals.

A handler is a small class with no-op hooks; subclass :class:`Handler` and override the
ones you need. Built-in handlers and third-party ones alike are found through the
entry-point group ``warden.handlers`` and enabled by name in the config's ``handlers``.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any, Optional

from warden import signals
from warden.config import Config
from warden.errors import ConfigError
from warden.model import Change, Container, ContainerTarget, DesiredState, LoadBalancerTarget, Route

logger = logging.getLogger(__name__)

#: built-in handlers that belong to the Manager: idle under ``warden registrar``
MANAGER_HANDLERS = frozenset({"ecs"})

#: hook method name -> the signal it receives: ``on_`` and the signal's name, with
#: ``_`` for ``-`` (``route-added`` -> ``on_route_added``), for every signal Warden has
HOOKS = {"on_" + name.replace("-", "_"): signal for name, signal in signals.every_signal().items()}


class Handler:
    """Base of every handler. Each ``on_<signal>`` hook receives that signal as
    ``(sender, **kw)`` (:mod:`warden.signals` documents each one's sender and keywords);
    only the hooks a subclass defines are connected. The hooks below are the ones
    handlers usually want; each takes ``**kw`` too, for keywords a later Warden adds."""

    #: the name it is enabled by in the config (its entry-point name)
    name = ""
    #: the commands it works under: ``registrar``, ``manager``
    roles = frozenset({"registrar", "manager"})

    #: the handler's own long-running threads, each with ``start()`` and a ``stop()``
    #: that asks without waiting; the default :meth:`start`, :meth:`stop` and
    #: :meth:`threads` start, stop and list them
    workers: tuple = ()

    def __init__(self, config: Config) -> None:
        self.config = config

    def start(self) -> None:
        """Start the handler's :attr:`workers`."""
        for worker in self.workers:
            worker.start()

    def stop(self) -> None:
        """Ask the handler's threads to stop, without waiting: the daemon joins
        :meth:`threads` under the process's one stop deadline. Called once at shutdown."""
        for worker in self.workers:
            worker.stop()

    def threads(self) -> list[Any]:
        """The handler's own long-running threads, watched by ``/livez``."""
        return list(self.workers)

    def register(self, telemetry: Any) -> None:
        """Offer counters of the handler's own to ``/metrics``
        (:meth:`warden.runtime.telemetry.Telemetry.counter_source`)."""

    def use_central(self, client: Any) -> None:
        """In a process that runs the Manager: the process's command connection to the
        central Redis (shared, short timeouts), for a handler that keeps cluster state
        where the next leader reads it. Called before :meth:`start`."""

    def on_container_changed(self, sender: Any, *, action: str, container_id: str,
                             container: Optional[Container], stopping: bool,
                             event_time: Optional[float] = None, **kw: Any) -> None:
        """A Docker event changed a container (the Registrar has acted on it)."""

    def on_route_added(self, sender: Any, *, route: Route, container: Optional[Container] = None,
                       event_time: Optional[float] = None, **kw: Any) -> None:
        """A server should be in a Redx backend."""

    def on_route_removed(self, sender: Any, *, route: Route, container_id: str = "",
                         event_time: Optional[float] = None, **kw: Any) -> None:
        """A server should leave a Redx backend."""

    def on_enrolment_changed(self, sender: Any, *, target: LoadBalancerTarget, enrolled: bool,
                             **kw: Any) -> None:
        """This instance should join or leave a load balancer or target group."""

    def on_container_target_changed(self, sender: Any, *, target: ContainerTarget, registered: bool,
                                    **kw: Any) -> None:
        """A container should join or leave its service's target group."""

    def on_services_changed(self, sender: Any, *, services: tuple, retired: DesiredState,
                            **kw: Any) -> None:
        """The service descriptions changed; ``retired`` is what the old ones held."""

    def on_sweep(self, sender: Any, *, desired: DesiredState, apply: bool = True,
                 wait: bool = True, **kw: Any) -> list[Change]:
        """Reconcile the handler's store with ``desired``; return the changes."""
        return []

    def on_change_made(self, sender: Any, *, change: Change, service: Optional[str] = None,
                       container_id: str = "", **kw: Any) -> None:
        """Some handler changed a store."""

    def on_handler_error(self, sender: Any, *, signal_name: str, receiver: str,
                         error: BaseException, **kw: Any) -> None:
        """A receiver raised."""

    def on_leadership_gained(self, sender: Any, *, instance_id: str, epoch: int,
                             zone: Optional[str] = None, **kw: Any) -> None:
        """This instance became the leader."""

    def on_leadership_lost(self, sender: Any, *, instance_id: str, epoch: Optional[int],
                           reason: str, **kw: Any) -> None:
        """This instance stopped leading."""

    def on_scaling_pass(self, sender: Any, *, service: Any, metric: float, steps: Any,
                        epoch: int, fence: Any, **kw: Any) -> Any:
        """The leader asks for one scaling pass for a service."""

    def on_scaled(self, sender: Any, *, service: str, metric: float, desired: int, running: int,
                  started: int, stopped: int, epoch: int, **kw: Any) -> None:
        """A scaling pass changed a task count."""

    def on_metric_failed(self, sender: Any, *, service: str, error: str, **kw: Any) -> None:
        """A metric could not be read; the count holds."""

    def on_scaling_failed(self, sender: Any, *, service: str, error: str, **kw: Any) -> None:
        """An ECS call of a scaling pass failed."""

    def on_host_draining(self, sender: Any, *, reason: str, lifecycle: Optional[dict] = None,
                         **kw: Any) -> None:
        """This host is being drained."""

    def on_aws_event(self, sender: Any, *, event: Any, **kw: Any) -> None:
        """An AWS event arrived through EventBridge and SQS."""

    def _overridden(self) -> list[str]:
        return [hook for hook in HOOKS
                if getattr(type(self), hook, None) not in (None, getattr(Handler, hook, None))]

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
    for name in _names(config):
        if "manager" not in roles and name in MANAGER_HANDLERS:
            continue
        if name not in found and name in MANAGER_HANDLERS:
            continue
        try:
            cls = _handler_class(name, found)
        except ConfigError as error:
            raise ConfigError(f"{config.display_path}: handlers: {error}") from None
        if not roles & cls.roles:
            continue
        handlers.append(cls(config))
    return handlers


def handler_problems(config: Config) -> list[str]:
    """What :func:`load_handlers` would refuse in ``config``, without making any
    handler (``warden validate``)."""
    found = {ep.name: ep for ep in entry_points(group="warden.handlers")}
    problems = []
    for name in _names(config):
        if name in found or name not in MANAGER_HANDLERS:
            try:
                _handler_class(name, found)
            except ConfigError as error:
                problems.append(str(error))
    return problems


def _names(config: Config) -> list[str]:
    names = list(config.handlers)
    if (config.alerts or {}) and "alerts" not in names:
        # Alerts configured but not listed: an operator who set a webhook wants it used.
        names.append("alerts")
    return names


def _handler_class(name: str, found: dict[str, Any]) -> type[Handler]:
    """The Handler subclass the entry point ``name`` names, or :class:`ConfigError`."""
    if name not in found:
        raise ConfigError(f"handler {name!r}: no entry point of that name in group warden.handlers "
                          f"(is its package installed? installed: {', '.join(sorted(found)) or 'none'})")
    try:
        cls = found[name].load()
    except Exception as error:  # noqa: BLE001 - any import failure is the plugin's
        raise ConfigError(f"handler {name!r} failed to load from "
                          f"{found[name].value}: {type(error).__name__}: {error}") from None
    if not (isinstance(cls, type) and issubclass(cls, Handler)):
        raise ConfigError(f"handler {name!r}: {found[name].value} is not a Handler subclass")
    return cls
