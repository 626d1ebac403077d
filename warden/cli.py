"""The ``warden`` command: ``warden [--config PATH] COMMAND``.

Exit codes: 0 success, 2 invalid configuration or usage, 1 anything else. The first
SIGTERM or SIGINT asks for a clean stop; a second exits at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from typing import Optional, Sequence

from warden import __version__
from warden.config import Config, load_config, require, resolve_config_path
from warden.errors import ConfigError, ConnectionLost, WardenError
from warden.services import ServiceCatalog

logger = logging.getLogger("warden")

EXIT_OK, EXIT_ERROR, EXIT_CONFIG = 0, 1, 2


class _JsonFormatter(logging.Formatter):
    """One JSON object a line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                 "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    # Library chatter (urllib3 retries, botocore credentials) is not Warden's news.
    for noisy in ("urllib3", "botocore", "boto3", "watchdog", "redis"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="warden",
        description="Keeps this Docker host's Redx routes and load-balancer enrolment in "
                    "step with its running containers.")
    parser.add_argument("--config", metavar="PATH",
                        help="config file (default: $WARDEN_CONFIG, then ./config.json)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"], help="default: info")
    parser.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="default: text")
    parser.add_argument("--version", action="version", version=f"warden {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    commands.add_parser("run", help="run the Registrar and the Manager in one process")
    commands.add_parser("registrar", help="run the Registrar: routes and enrolment from Docker events")
    commands.add_parser("manager", help="run the Manager: leader election over the central Redis")
    sweep = commands.add_parser("sweep", help="one full reconcile of this host now")
    sweep.add_argument("--dry-run", action="store_true",
                       help="print the changes it would make and change nothing")
    commands.add_parser("validate", help="check the config and every service description")
    status = commands.add_parser("status", help="services, routes, enrolment, leader and task counts")
    status.add_argument("--json", action="store_true", help="the stable, documented JSON form")
    return parser






def _load(config_arg: Optional[str]) -> tuple[Config, ServiceCatalog, list]:
    path = resolve_config_path(config_arg)
    config = require(*load_config(path))
    catalog = ServiceCatalog(config.service_description_path, config.service_description_display)
    _, problems = catalog.load()
    return config, catalog, problems


def cmd_validate(args: argparse.Namespace) -> int:
    """Print every problem as ``FILE: FIELD: problem``; exit 2 if any is an error."""
    path = resolve_config_path(args.config)
    config, problems = load_config(path)
    services_count = 0
    if config is not None:
        catalog = ServiceCatalog(config.service_description_path, config.service_description_display)
        services, found = catalog.load()
        problems = problems + found
        services_count = len(services)
    for problem in problems:
        print(problem)
    errors = [p for p in problems if not p.warning]
    if errors:
        print(f"{len(errors)} error(s)", file=sys.stderr)
        return EXIT_CONFIG
    print(f"ok: {path} and {services_count} service(s)", file=sys.stderr)
    return EXIT_OK


REGISTRAR, MANAGER = frozenset({"registrar"}), frozenset({"manager"})


def _prepare(args: argparse.Namespace, roles: frozenset[str] = REGISTRAR):
    """Config, services, identity, handlers and Docker for the Registrar's commands."""
    from warden.subscribers.docker import DockerSource
    from warden.handlers import load_handlers
    from warden.metadata import CONFIG_KEYS, ENV_KEYS, resolve_identity

    config, catalog, problems = _load(args.config)
    errors = [p for p in problems if not p.warning]
    for problem in problems:
        (logger.warning if problem.warning else logger.error)("%s", problem)
    if errors and not catalog.services:
        raise ConfigError("no service description could be loaded:\n"
                          + "\n".join(str(p) for p in errors))
    named = [s.name for s in catalog.services if s.targets]
    needed = ("instance_id", "region") if "elb" in config.handlers and named else ()
    config = resolve_identity(config, needed)
    for field in needed:
        if not getattr(config, field):
            raise ConfigError(
                f"{CONFIG_KEYS[field]} is needed by the elb handler (services "
                f"{', '.join(named)} name load balancers) but neither the config, "
                f"{ENV_KEYS[field]} nor instance metadata gives it")
    handlers = load_handlers(config, roles)
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as error:  # noqa: BLE001 - any failure here is "cannot reach Docker"
        raise ConnectionLost(f"cannot reach Docker ({os.environ.get('DOCKER_HOST', 'unix:///var/run/docker.sock')}): {error}") from None
    if any(h.name == "redx" for h in handlers):
        import redis

        try:
            probe = config.nginx_redis.client(socket_timeout=2, socket_connect_timeout=2)
            probe.ping()
            probe.close()
        except redis.RedisError as error:
            raise ConnectionLost(f"cannot reach the Redx Redis at {config.nginx_redis.display}: {error}") from None
    return config, catalog, handlers, DockerSource(client)


def cmd_sweep(args: argparse.Namespace) -> int:
    """One reconcile now; prints the change lines (planned only, with --dry-run)."""
    from warden.registrar import Registrar

    config, catalog, handlers, source = _prepare(args)
    registrar = Registrar(config, source, catalog)
    for handler in handlers:
        handler.connect()
    try:
        changes = registrar.sweep("warden sweep", apply=not args.dry_run, wait=True)
    finally:
        registrar.close()
        for handler in handlers:
            handler.disconnect()
            handler.stop()
    for change in changes:
        print(change)
    return EXIT_OK


def _prepare_manager(config: Config, roles: Optional[frozenset[str]] = MANAGER) -> tuple[Config, list]:
    """Identity and handlers for the Manager."""
    from warden.handlers import load_handlers
    from warden.metadata import CONFIG_KEYS, ENV_KEYS, resolve_identity

    needed = ("instance_id", "region") + (("availability_zone",) if config.zone_check == "ec2" else ())
    config = resolve_identity(config, needed)
    for field in needed:
        if not getattr(config, field):
            raise ConfigError(
                f"{CONFIG_KEYS[field]} is needed by the Manager but neither the config, "
                f"{ENV_KEYS[field]} nor instance metadata gives it")
    import redis

    try:
        probe = config.service_management_redis.client(socket_timeout=2, socket_connect_timeout=2)
        probe.ping()
        probe.close()
    except redis.RedisError as error:
        raise ConnectionLost(f"cannot reach the central Redis at "
                             f"{config.service_management_redis.display}: {error}") from None
    return config, load_handlers(config, roles) if roles else []


def _serve(daemons: list, config: Optional[Config] = None) -> int:
    """Start ``daemons`` (and ``/metrics`` when ``metricsAddress`` is set), wait for
    SIGTERM or SIGINT, stop them in reverse order. A second signal exits at once."""
    stop = threading.Event()
    telemetry = None
    if config is not None and config.metrics_address:
        from warden.telemetry import Telemetry

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
        for daemon in reversed(started):
            daemon.stop()
        if telemetry is not None:
            telemetry.stop()
    return EXIT_OK


def _enrols(catalog: ServiceCatalog) -> bool:
    """Does some service name a load balancer or target group?"""
    return any(s.targets for s in catalog.services)


def cmd_registrar(args: argparse.Namespace) -> int:
    """Run the Registrar until SIGTERM or SIGINT."""
    from warden.daemon import DrainDaemon, RegistrarDaemon
    from warden.subscribers.watchers import ServiceWatcher

    config, catalog, handlers, source = _prepare(args)
    daemons: list = [ServiceWatcher(catalog), RegistrarDaemon(config, catalog, handlers, source)]
    if any(h.name == "elb" for h in handlers):
        # Draining matters to the Registrar for its load-balancer enrolment.
        daemons.append(DrainDaemon(config, handlers, subscribe=True, enrols=_enrols(catalog)))
    return _serve(daemons, config)


def cmd_manager(args: argparse.Namespace) -> int:
    """Run the Manager until SIGTERM or SIGINT; a leader hands back on the way out."""
    from warden.daemon import DrainDaemon, ManagerDaemon
    from warden.subscribers.watchers import ServiceWatcher

    config, catalog, problems = _load(args.config)
    for problem in problems:
        (logger.warning if problem.warning else logger.error)("%s", problem)
    config, handlers = _prepare_manager(config)
    return _serve([ServiceWatcher(catalog), ManagerDaemon(config, catalog, handlers),
                   DrainDaemon(config, handlers, subscribe=False, enrols=_enrols(catalog))], config)


def cmd_run(args: argparse.Namespace) -> int:
    """The Registrar and the Manager in one process, one signal bus, one shutdown."""
    from warden.daemon import DrainDaemon, ManagerDaemon, RegistrarDaemon
    from warden.subscribers.watchers import ServiceWatcher

    config, catalog, handlers, source = _prepare(args, REGISTRAR | MANAGER)
    config, _ = _prepare_manager(config, roles=None)
    return _serve([ServiceWatcher(catalog), RegistrarDaemon(config, catalog, handlers, source),
                   ManagerDaemon(config, catalog, []),
                   DrainDaemon(config, handlers, subscribe=False, enrols=_enrols(catalog))], config)


def cmd_status(args: argparse.Namespace) -> int:
    """Print the status of this host and the cluster, as a table or as JSON."""
    from warden.metadata import resolve_identity
    from warden.status import collect, render_json, render_text

    config, catalog, problems = _load(args.config)
    for problem in problems:
        (logger.warning if problem.warning else logger.error)("%s", problem)
    needs_identity = any(s.targets for s in catalog.services)
    report = collect(resolve_identity(config, ("instance_id",) if needs_identity else ()),
                     catalog.services)
    print(render_json(report) if args.json else render_text(report))
    return EXIT_OK


COMMANDS = {"status": cmd_status, "validate": cmd_validate, "sweep": cmd_sweep, "registrar": cmd_registrar,
            "manager": cmd_manager, "run": cmd_run}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``warden`` command."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) and EXIT_CONFIG
    _setup_logging(args.log_level, args.log_format)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as error:
        print(f"warden: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except (ConnectionLost, WardenError) as error:
        print(f"warden: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR
    except Exception as error:  # noqa: BLE001 - a person sees one line, not a traceback
        logger.debug("unexpected error", exc_info=True)
        print(f"warden: {type(error).__name__}: {error} (--log-level debug shows where)",
              file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
