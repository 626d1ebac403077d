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

from warden import jsonfile, signals
from warden.config import (Config, RedisAddress, changed_keys, load_config, read_settings, require,
                           resolve_config_path)
from warden.control import METRIC_CHANNEL, ControlCodec
from warden.errors import ConfigError, ConnectionLost
from warden.handlers import Handler, load_handlers
from warden.handlers.redx import kept_keys
from warden.jsonfile import Problem
from warden.manager.demand import MetricContext
from warden.manager.drain import DrainRecorder, DrainRelay, DrainWatcher, LifecycleCompleter
from warden.manager.manager import Manager
from warden.manager.scaler import Scaler
from warden.model import Change
from warden.registrar.registrar import Registrar
from warden.runtime import logs
from warden.runtime.central import ACL_DOC, Central, version_problem
from warden.runtime.metadata import CONFIG_KEYS, ENV_KEYS, resolve_identity
from warden.runtime.supervisor import Component, HandlerPart, LeaderPart, Step, Supervisor, ThreadPart
from warden.runtime.telemetry import Telemetry
from warden.services import ServiceCatalog
from warden.subscribers.aws_events import AwsEventsConsumer, MetadataNotices
from warden.subscribers.channels import ControlSubscriber
from warden.subscribers.docker import DockerEventReader, DockerSource, docker_address
from warden.subscribers.sources import SourcePoller, catalog_for
from warden.subscribers.watchers import RedxWatcher, ServiceWatcher
from warden.subscribers.zones import ZoneChecker

logger = logging.getLogger(__name__)


def registrar_parts(config: Config, catalog: ServiceCatalog, handlers: list[Handler],
                    docker_source: DockerSource, central: Optional[Central] = None) -> list[Component]:
    """``warden registrar``'s components, in start order: the handlers, the Docker
    events reader, the Registrar's worker (its first sweep waits for the events stream
    to open, so a container started meanwhile is never missed) and, with the redx
    handler, the Redx watcher."""
    registrar = Registrar(config, docker_source, catalog)
    reader = DockerEventReader(docker_source, registrar.inbox)
    # Only the redx handler writes the Redx Redis: without it there is nothing to watch
    # (a host whose load balancers reach the containers directly may have no Redx).
    redx_watcher = (RedxWatcher(config, lambda: kept_keys(registrar.services, registrar.routed_backends))
                    if any(h.name == "redx" for h in handlers) else None)
    prober = registrar.prober

    def checks(telemetry: Any) -> None:
        telemetry.dependency("docker", reader.connected.is_set)
        if redx_watcher is not None:
            telemetry.dependency("redx-redis", lambda: redx_watcher.reachable)
        telemetry.watch_sweeps(config.registrar_sleep_time_seconds)
        telemetry.reconnect_source("docker-events", lambda: reader.reconnects)
        telemetry.counter_source("warden_label_problems",
                                 "Containers whose labels were refused (a bad value, a frontend or "
                                 "backend another service owns, or one the operator does not allow)",
                                 lambda: registrar.label_problems)
        telemetry.counter_source("warden_containers_reported_not_ready",
                                 "Containers whose readiness probe had no answer for "
                                 "readinessReportSeconds (each counted once)",
                                 lambda: prober.reported_total)
        telemetry.gauge_source("warden_containers_not_ready",
                               "Containers reported not ready and still unrouted",
                               lambda: len({p.container_id for p in prober.not_ready()}))

    def started() -> None:
        logger.info("registrar started: %d services, handlers %s",
                    len(registrar.services), ", ".join(h.name for h in handlers) or "none")

    return [*(HandlerPart(h, "registrar", central) for h in handlers),
            ThreadPart(reader, "registrar"),
            ThreadPart(registrar, "registrar", before=lambda: registrar.wait_before_first_sweep(reader.connected),
                       checks=checks),
            *([ThreadPart(redx_watcher, "registrar")] if redx_watcher is not None else []),
            Step("registrar", on_start=started)]


def manager_parts(config: Config, catalog: ServiceCatalog, handlers: list[Handler],
                  central: Central) -> list[Component]:
    """``warden manager``'s components, in start order: the handlers, the zone
    checker, the Scaler, the Manager's election thread (it hears when the subscription
    is held, so it starts listening first), the control-channel subscriber, and with
    an events queue the drain relay and the consumer. At shutdown the Manager hands
    leadership back before anything else stops."""
    zones = ZoneChecker(config.zone_check, config.region)
    codec = ControlCodec.for_config(config)
    manager = Manager(config, central, zones)
    scaler = Scaler(config, manager.leadership, catalog, MetricContext(central.commands, config.region), codec)
    # The one pub/sub connection: control channels, warden:metric, and this instance's
    # liveness channel (Redis empties it when the process dies).
    subscriber = ControlSubscriber(
        central.subscriber_client, codec,
        extra={METRIC_CHANNEL: scaler.on_metric_message, manager.alive_channel: manager.on_alive_message},
        connected=central.subscribed, resubscribe=central.resubscribe)

    def checks(telemetry: Any) -> None:
        telemetry.dependency("central-redis", subscriber.connected.is_set)
        if config.min_replicas_to_act:
            telemetry.dependency("central-redis-replicas", lambda: not manager.held, why=lambda: manager.held)
        telemetry.reconnect_source("control-channels", lambda: subscriber.reconnects)

    def started() -> None:
        logger.info("manager started as %s in zone %s", config.instance_id, config.availability_zone or "-")

    parts: list[Component] = [*(HandlerPart(h, "manager", central) for h in handlers),
                              ThreadPart(zones, "manager"), ThreadPart(scaler, "manager"),
                              LeaderPart(manager, "manager"), ThreadPart(subscriber, "manager", checks=checks)]
    if config.aws_events_queue_url:
        leadership = manager.leadership
        consumer = AwsEventsConsumer(config.aws_events_queue_url, config.region, lambda: leadership.acting,
                                     central.commands)
        relay = DrainRelay(manager)
        parts += [Step("manager", on_start=relay.start, on_stop=relay.stop), ThreadPart(consumer, "manager")]
    return parts + [Step("manager", on_start=started)]


def drain_parts(config: Config, handlers: list[Handler], subscribe: bool, central: Central) -> list[Component]:
    """This host's drain, once per process whatever the command: the drain watcher
    (the key, nudged by ``warden:drain``), this instance's own metadata notices on EC2,
    the record for ``warden status`` and the lifecycle action completed once drained.

    ``subscribe``: listen on ``warden:drain`` itself (``warden registrar``, which has no
    control-channel subscriber of its own)."""
    if not config.instance_id:
        return [Step("", on_start=lambda: logger.info(
            "this host's instanceId is unknown: it cannot be asked to drain"))]
    elb_here = any(h.name == "elb" for h in handlers)
    recorder = DrainRecorder(config, central)
    receivers = signals.Receivers((signals.host_draining, recorder.on_host_draining))
    threads: list[Any] = [DrainWatcher(config, central),
                          LifecycleCompleter(config, elb_here=elb_here, central=central)]
    if subscribe:
        threads.append(ControlSubscriber(
            central.subscriber_client, ControlCodec.for_config(config),
            channels=("warden:drain",)))
    if config.on_ec2:  # metadata answered when the identity was resolved
        threads.append(MetadataNotices())
    return [Step("", on_start=receivers.connect, on_stop=receivers.disconnect),
            *(ThreadPart(t, "") for t in threads)]


# -- assembly ----------------------------------------------------------------------

#: the roles each command plays
ROLES = {"registrar": frozenset({"registrar"}), "manager": frozenset({"manager"}),
         "run": frozenset({"registrar", "manager"}), "sweep": frozenset({"registrar"})}


def load(config_arg: Optional[str]) -> tuple[Config, ServiceCatalog, list[Problem]]:
    """The config (or :class:`ConfigError`) and the service catalog, loaded once, with
    the config's warnings and the problems found in the service files."""
    config, config_problems = load_config(resolve_config_path(config_arg))
    config = require(config, config_problems)
    logs.SETTINGS.use_config(config.log_level, config.log_format)
    catalog = catalog_for(config.service_description_path, config.service_description_display, config.region)
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
        raise ConnectionLost(f"cannot reach Docker at {docker_address()}: {error}") from None
    return client


def _check_version(client: Any, address: RedisAddress) -> None:
    """Refuse a central Redis older than Warden runs on, naming both versions. A user
    that may not run INFO is let through: the election names that permission."""
    try:
        version = str(client.info("server").get("redis_version", ""))
    except redis.exceptions.NoPermissionError:
        return
    problem = version_problem(version)
    if problem:
        raise ConfigError(f"the central Redis at {address.display} {problem}")
    logger.info("the central Redis at %s is Redis %s", address.display, version)


def _ping_redis(address: RedisAddress, what: str) -> None:
    try:
        client = address.client(socket_timeout=2, socket_connect_timeout=2)
        client.ping()
        if what == "the central Redis":
            _check_version(client, address)
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


def _service_source(config: Config, catalog: ServiceCatalog) -> Component:
    """What keeps the service descriptions current: the file watcher, or the poller of
    an S3 or SSM source."""
    if catalog.reader is None:
        return ServiceWatcher(catalog)  # type: ignore[return-value]
    poller = SourcePoller(catalog, config.service_source_poll_seconds)

    def checks(telemetry: Any) -> None:
        telemetry.counter_source("warden_service_file_errors",
                                 "Errors found in the service files (a broken file counts at each load)",
                                 lambda: catalog.errors)
        # A missing or emptied source keeps the services in force: unready, and why.
        telemetry.dependency("service-source", lambda: catalog.source_problem is None,
                             why=lambda: catalog.source_problem or "")

    return ThreadPart(poller, "services", checks=checks)


def build(command: str, parts: Parts) -> Supervisor:
    """The Supervisor of what ``command`` (``registrar``, ``manager`` or ``run``) runs,
    in start order: one service watcher per process, then the Registrar's and the
    Manager's parts, then this host's drain."""
    config, catalog, handlers = parts.config, parts.catalog, parts.handlers
    components: list[Component] = [_service_source(config, catalog)]
    # One command connection to the central Redis for the whole process.
    central = Central(config)
    if command in ("registrar", "run"):
        assert parts.docker is not None
        components += registrar_parts(config, catalog, handlers, parts.docker, central)
    if command in ("manager", "run"):
        # Under `run` the handlers were started once, by the Registrar's part.
        components += manager_parts(config, catalog, handlers if command == "manager" else [], central)
    if command != "registrar" or any(h.name == "elb" for h in handlers):
        # Draining matters to a lone Registrar only for its load-balancer enrolment; it
        # has no control-channel subscriber of its own to hear warden:drain.
        components += drain_parts(config, handlers, subscribe=command == "registrar", central=central)
    return Supervisor(components)


#: config keys a SIGHUP applies without a restart (lower case); ``alerts`` too where
#: the alerts handler runs
LIVE_KEYS = frozenset({"labelfrontends", "labelloadbalancers", "loglevel", "logformat"})


@dataclass
class Settings:
    """What SIGHUP compares a config file with: the settings read at start (for the
    keys that need a restart) and the ones last applied (for the live keys), each as
    :func:`warden.config.read_settings` reads them (the file, and WARDEN_<KEY> over it)."""

    started: Any
    applied: Any
    #: the live keys of this process (:data:`LIVE_KEYS`, and ``alerts`` where it alerts)
    live: frozenset = LIVE_KEYS


def reload_on_hangup(supervisor: Supervisor, config: Config, settings: Settings) -> None:
    """SIGHUP: the service files are read again (the same rules as after a change), and
    the config file too: of the live keys that changed since they were last applied,
    each is applied at once (the log level and format here; the label patterns and the
    alerts by :data:`warden.signals.settings_reloaded`); the other keys that changed
    since start are named, as they take effect at the next restart; a config file that
    no longer loads is reported and the configuration in force stays."""
    sources = [c for c in supervisor.components if isinstance(c, ServiceWatcher)] + [
        c.thread for c in supervisor.components if isinstance(c, ThreadPart) and isinstance(c.thread, SourcePoller)]
    for source in sources:
        logger.info("SIGHUP: service files read again: %d service(s) in force", source.reload_now())
    fresh, problems = load_config(config.path)
    errors = [p for p in problems if not p.warning]
    if fresh is None or errors:
        logger.error("SIGHUP: %s; the configuration in force stays",
                     "; ".join(str(p) for p in errors) or f"{config.display_path} does not load")
        return
    now = read_settings(config.path)[0] or jsonfile.KeyedObject([])
    live = [key for key in changed_keys(settings.applied, now) if key.lower() in settings.live]
    later = [key for key in changed_keys(settings.started, now) if key.lower() not in settings.live]
    settings.applied = now
    if live:
        kept = logs.SETTINGS.use_config(fresh.log_level, fresh.log_format)
        logger.info("SIGHUP: applied %s", ", ".join(live))
        for name in kept:
            logger.warning("SIGHUP: log%s stays %s, as --log-%s gave it", name.title(),
                           logs.SETTINGS.current[name], name)
        signals.send(signals.settings_reloaded, supervisor, config=fresh, keys=live)
    if later:
        logger.warning("SIGHUP: %s changed %s: they take effect at the next restart",
                       config.display_path, ", ".join(later))
    if not live and not later:
        logger.info("SIGHUP: %s unchanged", config.display_path)


def serve(supervisor: Supervisor, config: Config, handlers: Any = ()) -> int:
    """Start everything (and ``/metrics`` when ``metricsAddress`` is set), wait for
    SIGTERM or SIGINT, stop it all under ``stopTimeoutSeconds``; 0. The first signal
    asks for a clean stop; a second exits at once. SIGHUP reads the files again (see
    :func:`reload_on_hangup`)."""
    stop, hangup, wake = threading.Event(), threading.Event(), threading.Event()
    # What SIGHUP compares with: the settings read at start (with no file, the
    # environment's alone).
    started = read_settings(config.path)[0] or jsonfile.KeyedObject([])
    alerting = any(handler.name == "alerts" for handler in handlers)
    settings = Settings(started, started, LIVE_KEYS | {"alerts"} if alerting else LIVE_KEYS)
    telemetry = None
    if config.metrics_address:
        try:
            telemetry = Telemetry(config.metrics_address)
        except ValueError:
            raise ConfigError(f"metricsAddress {config.metrics_address!r} must be host:port") from None
        supervisor.register(telemetry)
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
        wake.set()

    def request_reload(signum: int, frame: object) -> None:
        # Done on the main thread's loop, not in the handler: a reload takes locks.
        hangup.set()
        wake.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, request_reload)
    try:
        supervisor.start()
        while not stop.is_set():
            wake.wait(0.5)
            wake.clear()
            if hangup.is_set() and not stop.is_set():
                hangup.clear()
                try:
                    reload_on_hangup(supervisor, config, settings)
                except Exception:  # noqa: BLE001 - a reload never ends the process
                    logger.exception("SIGHUP: reload failed; the configuration in force stays")
    finally:
        late = supervisor.stop(config.stop_timeout_seconds)
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
