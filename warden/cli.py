"""The ``warden`` command: ``warden [OPTIONS] COMMAND [OPTIONS]``.

Exit codes: 0 success, 2 invalid configuration or usage, 1 anything else. The first
SIGTERM or SIGINT asks for a clean stop; a second exits at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Optional, Sequence

from warden import __version__
from warden.config import load_config, resolve_config_path, service_location
from warden.errors import ConfigError, ConnectionLost, WardenError
from warden.jsonfile import Problem
from warden.runtime.logs import FORMATS, LEVELS, SETTINGS, JsonFormatter

logger = logging.getLogger("warden")

EXIT_OK, EXIT_ERROR, EXIT_CONFIG = 0, 1, 2


#: each command, with the one line its --help and the command list give
COMMAND_HELP = {
    "run": "run the Registrar and the Manager in one process (what a container host runs)",
    "registrar": "run the Registrar: routes and enrolment from Docker events",
    "manager": "run the Manager: leader election over the central Redis, and scaling",
    "sweep": "one full reconcile of this host now",
    "validate": "check the config and every service description",
    "config": "print the configuration in force: each key, its value and where it came from",
    "status": "services, routes, enrolment, leader and task counts, read from the stores",
}


def _global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """The options every command takes, before or after its name. Only the top-level
    parser has defaults: after the command, an option given overrides and one left out
    keeps what was given before it."""
    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    parser.add_argument("--config", metavar="PATH", default=default(None),
                        help="config file (default: $WARDEN_CONFIG, then ./config.json)")
    parser.add_argument("--log-level", type=str.lower, choices=LEVELS, metavar="LEVEL",
                        default=default(None),
                        help="debug, info, warning or error, in any case (default: $WARDEN_LOG_LEVEL, "
                             "then the config's logLevel, then info)")
    parser.add_argument("--log-format", type=str.lower, choices=FORMATS, metavar="FORMAT",
                        default=default(None),
                        help="text or json (default: $WARDEN_LOG_FORMAT, then the config's logFormat, "
                             "then text)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="warden",
        description="Keeps this Docker host's Redx routes and load-balancer enrolment in "
                    "step with its running containers.")
    _global_options(parser, top=True)
    parser.add_argument("--version", action="version", version=f"warden {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, top=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    made = {name: commands.add_parser(name, help=line, description=line, parents=[common])
            for name, line in COMMAND_HELP.items()}
    made["sweep"].add_argument("--dry-run", action="store_true",
                               help="print the changes it would make and change nothing")
    made["validate"].add_argument("--strict", action="store_true",
                                  help="exit 2 on warnings too (an unknown key, a refused label)")
    made["status"].add_argument("--json", action="store_true", help="the stable, documented JSON form")
    made["status"].add_argument("--check", action="store_true",
                                help="exit 1, saying why, when this host is unhealthy (for scripts)")
    return parser


def _environment_problems(args: argparse.Namespace) -> list[str]:
    """Defaults from the environment are not checked by argparse: check them here."""
    problems = []
    for name, allowed in (("WARDEN_LOG_LEVEL", LEVELS), ("WARDEN_LOG_FORMAT", FORMATS)):
        value = os.environ.get(name)
        if value is not None and value.lower() not in allowed:
            problems.append(f"{name} {value!r} must be one of {', '.join(allowed)}")
    return problems


def _say_error(message: str, fmt: str) -> None:
    """An error that ends the command: one line per line of ``message`` (one per
    problem), as JSON objects when the logs are JSON."""
    for line in message.splitlines() or [""]:
        if fmt == "json":
            record = logging.LogRecord(logger.name, logging.ERROR, __file__, 0, line, None, None)
            print(JsonFormatter().format(record), file=sys.stderr)
        else:
            print(f"warden: {line}", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    """Print every problem as ``FILE: FIELD: problem``; exit 2 if any is an error (with
    ``--strict``, if there is any problem at all)."""
    from warden.handlers import handler_problems

    path = resolve_config_path(args.config)
    config, problems = load_config(path)
    services_count, services = 0, ()
    if config is not None:
        # What `run` refuses before it starts, said here in the same words.
        problems = problems + [Problem(config.display_path, "handlers", p) for p in handler_problems(config)]
    # The service files too when the config has errors: every problem in one run.
    location = ((config.service_description_path, config.service_description_display) if config is not None
                else service_location(path))
    if location is not None:
        from warden.subscribers.sources import catalog_for

        catalog = catalog_for(*location, config.region if config is not None else None)
        services, found = catalog.load()
        problems = problems + found
        services_count = len(services)
    labels = _label_problems(config, services) if config is not None and config.container_labels else []
    for line in [str(p) for p in problems] + labels:
        print(line)
    errors = [p for p in problems if not p.warning]
    if errors or (args.strict and (problems or labels)):
        counted = f"{len(errors)} error(s)"
        if args.strict:
            counted += f", {len(problems) + len(labels) - len(errors)} warning(s) (--strict)"
        print(counted, file=sys.stderr)
        return EXIT_CONFIG
    print(f"ok: {path} and {services_count} service(s)", file=sys.stderr)
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    """Each config key, its value in force (secrets redacted) and its source: a
    ``WARDEN_<KEY>`` variable, the config file, or the default; exit 2 when the
    configuration has errors (they follow, one a line, on stderr)."""
    from warden.config import settings_view

    path = resolve_config_path(args.config)
    rows, problems, found = settings_view(path)
    print(f"# {path}" if found else f"# no config file ({os.path.abspath(path)}): the environment only")
    width = max(len(key) for key, _, _ in rows)
    for key, value, source in rows:
        print(f"{key.ljust(width)}  {value}  {source}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return EXIT_CONFIG if any(not p.warning for p in problems) else EXIT_OK


def _label_problems(config: Any, services: Sequence[Any]) -> list[str]:
    """The running containers whose labels are refused, as warning lines; none when
    Docker does not answer (validate checks files first of all)."""
    try:
        import docker

        from warden.status import label_view
        from warden.subscribers.docker import DockerSource

        listed = DockerSource(docker.from_env(timeout=3)).running()
    except Exception:  # noqa: BLE001 - no Docker here: nothing to say about labels
        return []
    return [f"{problem} (warning)" for problem in label_view(config, services, listed).refused.values()]


def cmd_sweep(args: argparse.Namespace) -> int:
    """One reconcile now; prints the change lines (planned only, with --dry-run)."""
    from warden.daemon import load, prepare, sweep_once

    for change in sweep_once(prepare("sweep", *load(args.config)), apply=not args.dry_run):
        print(change)
    return EXIT_OK


def cmd_daemon(args: argparse.Namespace) -> int:
    """``run``, ``registrar`` or ``manager``, until SIGTERM or SIGINT."""
    from warden.daemon import build, load, prepare, serve

    parts = prepare(args.command, *load(args.config))
    return serve(build(args.command, parts), parts.config, parts.handlers)


def cmd_status(args: argparse.Namespace) -> int:
    """Print the status of this host and the cluster, as a table or as JSON."""
    from warden.daemon import load
    from warden.runtime.metadata import resolve_identity
    from warden.status import collect, render_json, render_text, unhealthy

    config, catalog, problems = load(args.config)
    for problem in problems:
        (logger.warning if problem.warning else logger.error)("%s", problem)
    needs_identity = any(s.targets for s in catalog.services)
    report = collect(resolve_identity(config, ("instance_id",) if needs_identity else ()),
                     catalog.services)
    if catalog.source_problem:
        report["sourceProblem"] = catalog.source_problem + " (a running Warden keeps its services in force)"
    print(render_json(report) if args.json else render_text(report))
    if args.check:
        reasons = unhealthy(report)
        for reason in reasons:
            print(f"unhealthy: {reason}", file=sys.stderr)
        return EXIT_ERROR if reasons else EXIT_OK
    return EXIT_OK


COMMANDS = {"status": cmd_status, "validate": cmd_validate, "config": cmd_config, "sweep": cmd_sweep,
            "registrar": cmd_daemon, "manager": cmd_daemon, "run": cmd_daemon}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``warden`` command."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) and EXIT_CONFIG
    problems = _environment_problems(args)
    level = args.log_level or os.environ.get("WARDEN_LOG_LEVEL", "").lower() or None
    fmt = args.log_format or os.environ.get("WARDEN_LOG_FORMAT", "").lower() or "text"
    if fmt not in FORMATS:
        fmt = "text"
    if problems:
        _say_error("\n".join(problems), fmt)
        return EXIT_CONFIG
    given = {name: value for name, value in (("level", args.log_level), ("format", args.log_format)) if value}
    SETTINGS.start(level if level in LEVELS else None, fmt, given=given)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as error:
        _say_error(str(error), SETTINGS.current["format"])
        return EXIT_CONFIG
    except (ConnectionLost, WardenError) as error:
        _say_error(str(error), SETTINGS.current["format"])
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR
    except Exception as error:  # noqa: BLE001 - a person sees one line, not a traceback
        logger.debug("unexpected error", exc_info=True)
        _say_error(f"{type(error).__name__}: {error} (--log-level debug shows where)",
                   SETTINGS.current["format"])
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
