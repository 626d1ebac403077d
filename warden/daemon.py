"""Assembling the long-running parts: from a config path to the daemons a command
runs (subscribers, the Registrar, the Manager, the handlers), and serving them until
SIGTERM or SIGINT. The CLI only parses arguments, sets up logging and calls
:func:`build` and :func:`serve`.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Optional

import docker
import redis

from warden import signals
from warden.central import ACL_DOC, Central
from warden.config import Config, RedisAddress, load_config, require, resolve_config_path
from warden.control import METRIC_CHANNEL, ControlCodec
from warden.drain import DrainRecorder, DrainRelay, DrainWatcher, LifecycleCompleter
from warden.errors import ConfigError, ConnectionLost
from warden.handlers import Handler, load_handlers
from warden.handlers.redx import kept_keys
from warden.jsonfile import Problem
from warden.manager import Manager
from warden.metadata import CONFIG_KEYS, ENV_KEYS, resolve_identity
from warden.metrics import MetricContext
from warden.model import Change
from warden.registrar import Registrar
from warden.scaler import Scaler
from warden.services import ServiceCatalog
from warden.subscribers.aws_events import AwsEventsConsumer, MetadataNotices
from warden.subscribers.channels import ControlSubscriber
from warden.subscribers.docker import DockerEventReader, DockerSource
from warden.subscribers.watchers import RedxWatcher, ServiceWatcher
from warden.subscribers.zones import ZoneChecker
from warden.telemetry import Telemetry
from warden.threads import Deadline

logger = logging.getLogger(__name__)


class RegistrarDaemon:
    """``warden registrar``: the Docker events reader, the Registrar's worker, the
    Redx watcher and the handlers, started and stopped together."""

    def __init__(self, config: Config, catalog: ServiceCatalog, handlers: list[Handler],
                 docker_source: DockerSource, central: Optional[Central] = None) -> None:
        self.config = config
        self.catalog = catalog
        self.handlers = handlers
        self.docker = docker_source
        self.central = central
        self.registrar = Registrar(config, docker_source, catalog)
        self.reader = DockerEventReader(docker_source, self.registrar.inbox)
        self.redx_watcher = RedxWatcher(
            config, lambda: kept_keys(self.registrar.services, self.registrar.routed_backends))

    def register(self, telemetry: Any) -> None:
        """Threads and dependencies for ``/livez`` and ``/readyz``; counters for ``/metrics``."""
        for thread in [self.reader, self.registrar, self.redx_watcher,
                       *(t for h in self.handlers for t in h.threads())]:
            telemetry.thread_check(thread)
        for handler in self.handlers:
            handler.register(telemetry)
        telemetry.dependency("docker", self.reader.connected.is_set)
        telemetry.dependency("redx-redis", lambda: self.redx_watcher.reachable)
        telemetry.watch_sweeps(self.config.registrar_sleep_time_seconds)
        telemetry.reconnect_source("docker-events", lambda: self.reader.reconnects)
        telemetry.counter_source("warden_label_problems",
                                 "Containers whose labels were refused (a bad value, or a "
                                 "frontend or backend another service owns)",
                                 lambda: self.registrar.label_problems)
        prober = self.registrar.prober
        telemetry.counter_source("warden_containers_reported_not_ready",
                                 "Containers whose readiness probe had no answer for "
                                 "readinessReportSeconds (each counted once)",
                                 lambda: prober.reported_total)
        telemetry.gauge_source("warden_containers_not_ready",
                               "Containers reported not ready and still unrouted",
                               lambda: len({p.container_id for p in prober.not_ready()}))

    def start(self) -> None:
        """Start everything; the first sweep waits for the events stream to open."""
        for handler in self.handlers:
            if self.central is not None:
                handler.use_central(self.central.commands)
            handler.connect()
            handler.start()
        self.reader.start()
        self.registrar.wait_before_first_sweep(self.reader.connected)
        self.registrar.start()
        self.redx_watcher.start()
        logger.info("registrar started: %d services, handlers %s",
                    len(self.registrar.services), ", ".join(h.name for h in self.handlers) or "none")

    def request_stop(self) -> None:
        """Ask the subscribers and the Registrar to stop (it finishes its step)."""
        self.redx_watcher.stop()
        self.reader.stop()
        self.registrar.stop()

    def stop(self, deadline: Optional[Deadline] = None) -> list[str]:
        """Stop the subscribers first, then let the Registrar finish its step, then the
        handlers; the threads still running at the deadline (30 s without one)."""
        deadline = deadline or Deadline(30)
        self.request_stop()
        late = deadline.join(self.registrar, self.reader, self.redx_watcher)
        late += _stop_handlers(self.handlers, deadline)
        logger.info("registrar stopped")
        return late


class ManagerDaemon:
    """``warden manager``: the zone checker, the control-channel subscriber, the
    Manager's election thread and the Scaler, started and stopped together."""

    def __init__(self, config: Config, catalog: ServiceCatalog, handlers: list[Handler],
                 central: Central) -> None:
        self.config = config
        self.catalog = catalog
        self.handlers = handlers
        self.central = central
        self.zones = ZoneChecker(config.zone_check, config.region)
        self.codec = ControlCodec(config.control_secrets, config.lease_seconds)
        self.manager = Manager(config, central, self.zones)
        self.scaler = Scaler(config, self.manager, catalog, MetricContext(central.commands, config.region),
                             self.codec)
        self.relay = DrainRelay(self.manager)
        self.consumer = (AwsEventsConsumer(config.aws_events_queue_url, config.region,
                                           lambda: self.manager.acting)
                         if config.aws_events_queue_url else None)
        # The one pub/sub connection: control channels, warden:metric, and this
        # instance's liveness channel (Redis empties it when the process dies).
        self.subscriber = ControlSubscriber(
            central.subscriber_client, self.codec,
            extra={METRIC_CHANNEL: self.scaler.on_metric_message,
                   self.manager.alive_channel: self.manager.on_alive_message},
            connected=central.subscribed, resubscribe=central.resubscribe)

    def register(self, telemetry: Any) -> None:
        """Threads and dependencies for ``/livez`` and ``/readyz``; counters for ``/metrics``."""
        for thread in [self.manager, self.manager.watch, self.scaler,
                       self.subscriber, self.zones, self.consumer,
                       *(t for h in self.handlers for t in h.threads())]:
            if thread is not None:
                telemetry.thread_check(thread)
        for handler in self.handlers:
            handler.register(telemetry)
        telemetry.dependency("central-redis", self.subscriber.connected.is_set)
        if self.config.min_replicas_to_act:
            telemetry.dependency("central-redis-replicas", lambda: not self.manager.held,
                                 why=lambda: self.manager.held)
        telemetry.reconnect_source("control-channels", lambda: self.subscriber.reconnects)

    def start(self) -> None:
        for handler in self.handlers:
            handler.use_central(self.central.commands)
            handler.connect()
            handler.start()
        self.zones.start()
        self.scaler.start()
        # The Manager hears when the subscription is held: it starts listening first.
        self.manager.start()
        self.subscriber.start()
        if self.consumer is not None:
            self.relay.start()
            self.consumer.start()
        logger.info("manager started as %s in zone %s", self.config.instance_id,
                    self.config.availability_zone or "-")

    def hand_back(self, deadline: Deadline) -> list[str]:
        """First of all at shutdown: the Manager ends its step and hands leadership
        back, whatever else is in flight (a scaling pass after it is fenced out)."""
        self.manager.stop()
        return deadline.join(self.manager)

    def request_stop(self) -> None:
        """Ask every part to stop: consuming, scaling (the pass in flight finishes or is
        abandoned at the deadline), leading, listening."""
        if self.consumer is not None:
            self.consumer.stop()
            self.relay.stop()
        self.scaler.stop()
        self.manager.stop()
        self.subscriber.stop()
        self.zones.stop()

    def stop(self, deadline: Optional[Deadline] = None) -> list[str]:
        """Stop every part, then the handlers; the threads still running at the
        deadline (30 s without one)."""
        deadline = deadline or Deadline(30)
        self.request_stop()
        late = deadline.join(self.manager, self.consumer, self.scaler, self.subscriber, self.zones)
        late += _stop_handlers(self.handlers, deadline)
        logger.info("manager stopped")
        return late


class DrainDaemon:
    """This host's drain, once per process whatever the command: the drain watcher
    (the key, nudged by ``warden:drain``), this instance's own metadata notices on EC2,
    the record for ``warden status`` and the lifecycle action completed once drained.

    ``subscribe``: listen on ``warden:drain`` itself (``warden registrar``, which has no
    control-channel subscriber of its own)."""

    def __init__(self, config: Config, handlers: list[Handler], subscribe: bool, central: Central) -> None:
        self.config = config
        elb_here = any(h.name == "elb" for h in handlers)
        self.watcher = DrainWatcher(config, central)
        self.completer = LifecycleCompleter(config, elb_here=elb_here, central=central)
        self.recorder = DrainRecorder(config, central)
        self.receivers = signals.Receivers((signals.host_draining, self.recorder.on_host_draining))
        self.subscriber = (ControlSubscriber(
            central.subscriber_client, ControlCodec(config.control_secrets, config.lease_seconds),
            channels=("warden:drain",))
            if subscribe else None)
        # Only on EC2 (metadata answered when the identity was resolved).
        self.notices = MetadataNotices() if config.on_ec2 else None
        self.threads = [t for t in (self.watcher, self.completer, self.subscriber, self.notices)
                        if t is not None]

    def register(self, telemetry: Any) -> None:
        """Its threads, for ``/livez``."""
        for thread in self.threads:
            telemetry.thread_check(thread)

    def start(self) -> None:
        if not self.config.instance_id:
            logger.info("this host's instanceId is unknown: it cannot be asked to drain")
            return
        self.receivers.connect()
        for thread in self.threads:
            thread.start()

    def request_stop(self) -> None:
        for thread in self.threads:
            thread.stop()

    def stop(self, deadline: Optional[Deadline] = None) -> list[str]:
        deadline = deadline or Deadline(30)
        self.request_stop()
        late = deadline.join(*self.threads)
        self.receivers.disconnect()
        return late


# -- assembly ----------------------------------------------------------------------

#: the roles each command plays
ROLES = {"registrar": frozenset({"registrar"}), "manager": frozenset({"manager"}),
         "run": frozenset({"registrar", "manager"}), "sweep": frozenset({"registrar"})}


def load(config_arg: Optional[str]) -> tuple[Config, ServiceCatalog, list[Problem]]:
    """The config (or :class:`ConfigError`) and the service catalog, loaded once, with
    the config's warnings and the problems found in the service files."""
    config, config_problems = load_config(resolve_config_path(config_arg))
    config = require(config, config_problems)
    catalog = ServiceCatalog(config.service_description_path, config.service_description_display)
    _, problems = catalog.load()
    # The config's warnings too (an unknown key is often a misspelt one), so a daemon
    # says at start what `warden validate` says.
    return config, catalog, config_problems + problems


@dataclass
class Parts:
    """What a command's daemons are made of, each checked once."""

    config: Config
    catalog: ServiceCatalog
    handlers: list[Handler]
    #: the Docker engine, for the Registrar's commands
    docker: Optional[DockerSource]


def prepare(command: str, config: Config, catalog: ServiceCatalog, problems: list[Problem]) -> Parts:
    """Identity, handlers, and a first answer from each store the command needs (Docker,
    the Redx Redis, the central Redis), or the error that names what is missing. The
    service files' ``problems`` are logged; for the Registrar's commands, files that
    give no service at all are an error."""
    roles = ROLES[command]
    for problem in problems:
        (logger.warning if problem.warning else logger.error)("%s", problem)
    errors = [p for p in problems if not p.warning]
    if "registrar" in roles and errors and not catalog.services:
        raise ConfigError("no service description could be loaded:\n" + "\n".join(map(str, errors)))
    needed: dict[str, str] = {}
    named = [s.name for s in catalog.services if s.targets]
    if "registrar" in roles and "elb" in config.handlers and named:
        why = f"the elb handler (services {', '.join(named)} name load balancers)"
        needed.update({"instance_id": why, "region": why})
    if "manager" in roles:
        for field in ("instance_id", "region") + (
                ("availability_zone",) if config.zone_check == "ec2" else ()):
            needed.setdefault(field, "the Manager")
    config = resolve_identity(config, tuple(needed))
    for field, who in needed.items():
        if not getattr(config, field):
            raise ConfigError(f"{CONFIG_KEYS[field]} is needed by {who} but neither the config, "
                              f"{ENV_KEYS[field]} nor instance metadata gives it")
    # Under `warden run` each handler is made once, for both parts.
    handlers = load_handlers(config, roles)
    source = None
    if "registrar" in roles:
        source = DockerSource(_docker_client())
        if any(h.name == "redx" for h in handlers):
            _ping_redis(config.nginx_redis, "the Redx Redis")
    if "manager" in roles:
        _ping_redis(config.service_management_redis, "the central Redis")
    return Parts(config, catalog, handlers, source)


def _docker_client() -> Any:
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as error:  # noqa: BLE001 - any failure here is "cannot reach Docker"
        raise ConnectionLost(f"cannot reach Docker ({os.environ.get('DOCKER_HOST', 'unix:///var/run/docker.sock')}): "
                             f"{error}") from None
    return client


def _ping_redis(address: RedisAddress, what: str) -> None:
    try:
        client = address.client(socket_timeout=2, socket_connect_timeout=2)
        client.ping()
        client.close()
    except redis.AuthenticationError as error:
        keys = ("serviceManagementRedisUsername and serviceManagementRedisPassword"
                if what == "the central Redis" else "the user and password in nginxRedisAddress")
        raise ConnectionLost(f"{what} at {address.display} refused the login ({error}): check {keys}, "
                             f"and {ACL_DOC}") from None
    except redis.RedisError as error:
        raise ConnectionLost(f"cannot reach {what} at {address.display}: {error}") from None


def sweep_once(parts: Parts, apply: bool) -> list[Change]:
    """``warden sweep``: one reconcile of this host now; the changes made (or, with
    ``apply=False``, the ones that would be)."""
    assert parts.docker is not None
    registrar = Registrar(parts.config, parts.docker, parts.catalog)
    for handler in parts.handlers:
        handler.connect()
    try:
        return registrar.sweep("warden sweep", apply=apply, wait=True)
    finally:
        registrar.close()
        for handler in parts.handlers:
            handler.disconnect()
            handler.stop()


def build(command: str, parts: Parts) -> list[Any]:
    """The daemons ``command`` (``registrar``, ``manager`` or ``run``) runs, in start
    order: one service watcher per process, then the Registrar's and the Manager's
    parts, then this host's drain."""
    config, catalog, handlers = parts.config, parts.catalog, parts.handlers
    daemons: list[Any] = [ServiceWatcher(catalog)]
    # One command connection to the central Redis for the whole process.
    central = Central(config)
    if command in ("registrar", "run"):
        assert parts.docker is not None
        daemons.append(RegistrarDaemon(config, catalog, handlers, parts.docker, central))
    if command in ("manager", "run"):
        # Under `run` the handlers were connected once, by the Registrar's part.
        daemons.append(ManagerDaemon(config, catalog, handlers if command == "manager" else [], central))
    if command != "registrar" or any(h.name == "elb" for h in handlers):
        # Draining matters to a lone Registrar only for its load-balancer enrolment; it
        # has no control-channel subscriber of its own to hear warden:drain.
        daemons.append(DrainDaemon(config, handlers, subscribe=command == "registrar", central=central))
    return daemons


def serve(daemons: list[Any], config: Config) -> int:
    """Start ``daemons`` (and ``/metrics`` when ``metricsAddress`` is set), wait for
    SIGTERM or SIGINT, stop them in reverse order; 0. The first signal asks for a clean
    stop; a second exits at once."""
    stop = threading.Event()
    telemetry = None
    if config.metrics_address:
        try:
            telemetry = Telemetry(config.metrics_address)
        except ValueError:
            raise ConfigError(f"metricsAddress {config.metrics_address!r} must be host:port") from None
        for daemon in daemons:
            daemon.register(telemetry)
        try:
            telemetry.start()
        except OSError as error:
            raise ConnectionLost(f"cannot serve metrics on {config.metrics_address}: {error}") from None

    def request_stop(signum: int, frame: object) -> None:
        if stop.is_set():
            logger.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        logger.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    started = []
    try:
        for daemon in daemons:
            daemon.start()
            started.append(daemon)
        while not stop.wait(0.5):
            pass
    finally:
        # One deadline for the whole stop: leadership handed back first; then every
        # part is asked to stop, and joined, in reverse start order, so that one part
        # stuck in a call never keeps the others from stopping.
        deadline = Deadline(config.stop_timeout_seconds)
        late: list[str] = []
        for daemon in reversed(started):
            if hasattr(daemon, "hand_back"):
                late += daemon.hand_back(deadline)
        for daemon in reversed(started):
            daemon.request_stop()
        for daemon in reversed(started):
            late += daemon.stop(deadline)
        if telemetry is not None:
            telemetry.stop()
    if late:
        # Their step is abandoned: a process must end within its stop limit (ECS's
        # stopTimeout, systemd's TimeoutStopSec), and a worker thread of a pool would
        # hold the interpreter's exit.
        logger.error("not stopped within stopTimeoutSeconds (%g s): %s; exiting anyway",
                     config.stop_timeout_seconds, ", ".join(sorted(set(late))))
        logging.shutdown()
        os._exit(0)
    return 0


def _stop_handlers(handlers: list[Handler], deadline: Deadline) -> list[str]:
    """Ask each handler to stop, then join its threads until the deadline."""
    late: list[str] = []
    for handler in handlers:
        try:
            handler.stop()
        finally:
            handler.disconnect()
    for handler in handlers:
        late += deadline.join(*handler.threads())
    return late
