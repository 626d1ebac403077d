"""``warden status``: what this host and the cluster look like now, read from the
stores themselves (the Redx Redis, Docker, the load balancers, the central Redis, ECS),
so it works whether or not the daemon runs. A part that cannot be read is reported in
``errors`` and shown as unknown; it never fails the command."""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from warden.config import Config
from warden.services import Service

#: bump when the JSON form changes incompatibly
SCHEMA_VERSION = 1


def collect(config: Config, services: tuple[Service, ...]) -> dict:
    """The status as a JSON-ready dict (the documented ``--json`` form)."""
    errors: list[str] = []
    report: dict[str, Any] = {"schema": SCHEMA_VERSION, "instanceId": config.instance_id,
                              "zone": config.availability_zone, "services": [], "leader": None,
                              "errors": errors}
    listed = _listing(errors)
    if listed is not None and config.container_labels:
        labelled = label_view(config, services, listed)
        services = tuple(services) + labelled.services
        report["labelProblems"] = [str(problem) for problem in labelled.refused.values()]
    else:
        report["labelProblems"] = []
    servers = _redx_servers(config, services, errors)
    containers = _containers(services, config, listed)
    enrolled = _enrolment(config, services, errors)
    members = _container_targets(config, services, errors)
    tasks = _tasks(config, services, errors)
    for service in services:
        report["services"].append({
            "name": service.name,
            "source": service.source,
            "frontend": service.frontend or None,
            "backend": service.backend_name,
            "routes": servers.get(service.backend_name),
            # No server: the frontend key is absent, and Redx sends its requests to
            # nginx's fallback.
            "fallback": (None if servers.get(service.backend_name) is None
                         else bool(service.frontend) and not servers[service.backend_name]),
            "containers": containers.get(service.name),
            "loadBalancers": [{"target": t.change_text(config.instance_id or "?"),
                               "enrolled": enrolled.get(t)} for t in service.targets]
            + members.get(service.member_group, []),
            "tasks": tasks.get(service.name, {"desired": None, "running": None}),
        })
    report["leader"], report["draining"] = _leader(config, errors)
    return report


def label_view(config: Config, services: tuple[Service, ...], listed: list) -> Any:
    """What the running containers' labels define, judged as the Registrar judges it:
    the operator's patterns, then (with the Redx handler) the Redx keys, under this
    host's Docker networks."""
    from warden.labels import LabelPolicy, label_services

    objection = None
    if "redx" in config.handlers:
        from warden.handlers.redx import foreign_keys
        from warden.model import Ownership

        subnets = _subnets()
        client = config.nginx_redis.client(decode_responses=True, socket_timeout=2,
                                           socket_connect_timeout=2)
        published = frozenset(s.backend_name for s in services if s.published_port)

        ownership = Ownership(subnets, config.host_address, published)

        def redx_objection(service: Service) -> Optional[tuple[str, str]]:
            answer = foreign_keys(client, config.nginx_redis.display, service,
                                  ownership.with_service(service.backend_name, service.published_port))
            return (config.label_prefix + answer[0], answer[1]) if answer else None

        objection = redx_objection

    return label_services(listed, services, config.label_prefix, LabelPolicy.of(config), objection)


def _subnets() -> tuple:
    try:
        import docker

        from warden.subscribers.docker import DockerSource

        return DockerSource(docker.from_env(timeout=5)).subnets()
    except Exception:  # noqa: BLE001 - no networks known: no server counts as this host's
        return ()


def _redx_servers(config: Config, services: tuple[Service, ...], errors: list) -> dict:
    from warden.handlers.redx import backend_key, is_server

    if "redx" not in config.handlers:
        if "haproxy" in config.handlers:
            return _haproxy_servers(config, services, errors)
        if "traefik" in config.handlers:
            return _traefik_servers(config, services, errors)
        return {}  # no routes kept here: each service's routes are unknown (null)
    try:
        client = config.nginx_redis.client(decode_responses=True, socket_timeout=2,
                                           socket_connect_timeout=2)
        pipe = client.pipeline(transaction=False)
        names = sorted({s.backend_name for s in services})
        for name in names:
            pipe.hkeys(backend_key(name))
        replies = pipe.execute()
        client.close()
        return {name: sorted(a for a in reply if is_server(a)) for name, reply in zip(names, replies)}
    except Exception as error:  # noqa: BLE001 - status reports, never fails
        errors.append(f"Redx Redis {config.nginx_redis.display}: {error}")
        return {}


def _listing(errors: list) -> Optional[list]:
    try:
        import docker

        from warden.subscribers.docker import DockerSource

        return DockerSource(docker.from_env(timeout=5)).running()
    except Exception as error:  # noqa: BLE001
        from warden.subscribers.docker import docker_address

        errors.append(f"Docker: cannot reach Docker at {docker_address()}: {error}")
        return None


def _containers(services: tuple[Service, ...], config: Config, listed: Optional[list]) -> dict:
    if listed is None:
        return {}
    label = config.label_prefix + "service"
    found: dict[str, list] = {s.name: [] for s in services}
    for container in listed:
        for service in services:
            if service.claims(container, label):
                address, why = service.address_of(container, config.host_address)
                found[service.name].append({"name": container.name, "id": container.short_id,
                                            "health": container.health, "paused": container.paused,
                                            "address": address, "ready": _ready(service, container)})
    return found


def _ready(service: Service, container: Any) -> Optional[bool]:
    """One readiness probe, as the Registrar would make it; None when a Docker health
    check or ``readiness: "none"`` decides instead."""
    from warden.registrar.readiness import probe_for

    probe, why = probe_for(service, container)
    if probe is None:
        return False if why else None
    return probe.attempt(timeout=0.5)


def _enrolment(config: Config, services: tuple[Service, ...], errors: list) -> dict:
    targets = sorted({t for s in services for t in s.targets})
    if not targets:
        return {}
    if not config.instance_id:
        errors.append("load balancers: this host's instanceId is unknown")
        return {}
    from warden.handlers.elb import AWS_CLIENT_CONFIG, is_enrolled
    from warden.runtime import aws

    def client(name: str) -> Any:
        return aws.client(name, config.region, AWS_CLIENT_CONFIG)

    found = {}
    for target in targets:
        try:
            found[target] = is_enrolled(client, config.instance_id, target)
        except Exception as error:  # noqa: BLE001
            errors.append(f"{target.change_text(config.instance_id)}: {error}")
    return found


def _haproxy_servers(config: Config, services: tuple[Service, ...], errors: list) -> dict:
    """Each backend's servers that take requests, as HAProxy's runtime API says."""
    from warden.handlers.haproxy import RuntimeApi, RuntimeApiError, too_old

    settings = {k.lower(): v for k, v in (config.haproxy or {}).items()}
    api = RuntimeApi(str(settings.get("runtimeapi") or "/run/haproxy/admin.sock"))
    try:
        refusal = too_old(api("show info"), api.address)
        if refusal is not None:
            raise refusal
        servers = api.servers()
    except RuntimeApiError as error:
        errors.append(str(error))
        return {}
    taking: dict[str, list] = {}
    for server in servers:
        if server.taking:
            taking.setdefault(server.backend, []).append(server.address)
    # A service's servers are in the HAProxy backend its haproxyBackend names.
    return {s.backend_name: sorted(taking.get(s.haproxy_backend or s.backend_name, [])) for s in services}


def _traefik_servers(config: Config, services: tuple[Service, ...], errors: list) -> dict:
    """Each backend's servers as Traefik's Redis provider holds them."""
    from warden.handlers.traefik import TraefikStore

    store = TraefikStore(config)
    found: dict[str, list] = {}
    try:
        for name in sorted({s.backend_name for s in services}):
            found[name] = sorted(store.servers(name)[1])
    except Exception as error:  # noqa: BLE001 - status reports, never fails
        errors.append(f"Traefik's Redis {store.display}: {error}")
        return {}
    finally:
        store.redis.close()
    return found


def _container_targets(config: Config, services: tuple[Service, ...], errors: list) -> dict:
    """Each ``targetMode: "container"`` group's targets that are this host's (this
    instance's in an instance group, those this host recorded in an ip group), with
    their state: ``{"target", "enrolled", "state"}`` entries by group ARN."""
    groups = sorted({s.member_group for s in services if s.member_group})
    if not groups:
        return {}
    from warden.handlers.elb import AWS_CLIENT_CONFIG
    from warden.handlers.members import TARGETS_PREFIX, change_text
    from warden.runtime import aws

    recorded: set[str] = set()
    if config.instance_id:
        try:
            client = config.service_management_redis.client(socket_timeout=2, socket_connect_timeout=2,
                                                            decode_responses=True)
            recorded = set(client.smembers(TARGETS_PREFIX + config.instance_id))
            client.close()
        except Exception as error:  # noqa: BLE001
            errors.append(f"ip targets of this host: central Redis {config.service_management_redis.display}: "
                          f"{error}")
    elbv2 = aws.client("elbv2", config.region, AWS_CLIENT_CONFIG)
    found: dict[str, list] = {}
    for arn in groups:
        try:
            described = elbv2.describe_target_groups(TargetGroupArns=[arn])["TargetGroups"]
            kind = (described[0].get("TargetType") if described else None) or "instance"
            health = elbv2.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
        except Exception as error:  # noqa: BLE001
            errors.append(f"targetgroup:{arn}: {error}")
            continue
        entries = []
        for description in health:
            key = (str(description["Target"]["Id"]), int(description["Target"].get("Port") or 0))
            mine = (key[0] == config.instance_id if kind == "instance"
                    else f"{arn} {key[0]}:{key[1]}" in recorded)
            if mine:
                state = (description.get("TargetHealth") or {}).get("State", "initial")
                entries.append({"target": change_text(arn, key), "enrolled": state != "draining",
                                "state": state})
        found[arn] = sorted(entries, key=lambda e: e["target"])
    return found


def _tasks(config: Config, services: tuple[Service, ...], errors: list) -> dict:
    scaled = [s for s in services if s.metric and s.task_name]
    if not scaled:
        return {}
    from warden.handlers.ecs import AWS_CLIENT_CONFIG, warden_tasks
    from warden.manager.demand import MetricContext, MetricError, load_metric
    from warden.policy import Policy, StepsSource
    from warden.runtime import aws

    ecs = aws.client("ecs", config.region, AWS_CLIENT_CONFIG)
    context = MetricContext(config.service_management_redis.client(socket_timeout=2,
                                                                   socket_connect_timeout=2),
                            config.region)
    steps_source = StepsSource(lambda: context.aws("s3"), os.path.dirname(config.path))
    found = {}
    for service in scaled:
        entry: dict[str, Optional[float]] = {"desired": None, "running": None, "metric": None}
        try:
            entry["running"] = len(warden_tasks(ecs, service.cluster or config.ecs_cluster, service))
        except Exception as error:  # noqa: BLE001
            errors.append(f"ECS tasks of {service.name}: {error}")
        try:
            policy = service.scaling or Policy()
            value = load_metric(service.metric or {}, context).read()
            steps = steps_source.steps(policy.steps_url) if policy.steps_url else policy.steps
            entry["metric"] = value
            entry["desired"] = policy.wanted(value, steps)
        except MetricError as error:
            errors.append(f"metric of {service.name}: {error}")
        found[service.name] = entry
    return found


def _leader(config: Config, errors: list) -> tuple[Optional[dict], Optional[str]]:
    """The leader record, and why this host drains (None when it does not)."""
    from warden.manager.election import ElectionStore
    from warden.subscribers.aws_events import REFUSED_KEY

    try:
        client = config.service_management_redis.client(socket_timeout=2, socket_connect_timeout=2,
                                                        decode_responses=True)
        view = ElectionStore(client, config.instance_id or "-", config.lease_seconds,
                             config.legacy_max_heartbeat_age_seconds, config.guard_time_seconds,
                             config.candidate_expiry_seconds).check(standing=False)
        draining = client.get(f"warden:draining:{config.instance_id}") if config.instance_id else None
        refused = client.hgetall(REFUSED_KEY)
        client.close()
    except Exception as error:  # noqa: BLE001
        errors.append(f"central Redis {config.service_management_redis.display}: {error}")
        return None, None
    counts = {reason: int(n) for reason, n in sorted(refused.items()) if str(n).isdigit()}
    if view.state == "none":
        return {"id": None, "state": "none", "zone": None, "heartbeatAgeSeconds": None,
                "epoch": None, "legacy": False, "awsEventsRefused": counts}, draining
    return {"id": view.leader_id, "state": view.state, "zone": view.zone or None,
            "heartbeatAgeSeconds": None if view.age_ms < 0 else round(view.age_ms / 1000, 3),
            "epoch": view.epoch, "legacy": view.legacy, "awsEventsRefused": counts}, draining


def _cell(value: Any) -> str:
    if value is None:
        return "?"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def render_text(report: dict) -> str:
    """The report as a table that reads at a glance in a terminal."""
    rows = [("SERVICE", "FROM", "FRONTEND", "ROUTES", "CONTAINERS", "LOAD BALANCERS",
             "TASKS (desired/running)")]
    for s in report["services"]:
        routes = s["routes"]
        lbs = ", ".join(f"{lb['target']}={lb['state']}" if "state" in lb
                        else f"{lb['target'].split(' ')[0]}={_cell(lb['enrolled'])}"
                        for lb in s["loadBalancers"]) or "-"
        tasks = s["tasks"]
        task_text = "-" if tasks["desired"] is None and tasks["running"] is None \
            else f"{_cell(tasks['desired'])}/{_cell(tasks['running'])}"
        containers = s["containers"]
        waiting = sum(1 for c in containers or () if c.get("ready") is False)
        source = s.get("source") or "-"
        rows.append((s["name"], "labels" if source.startswith("labels of ") else source,
                     s["frontend"] or "-",
                     "?" if routes is None else (", ".join(routes) or (
                         "no servers (fallback)" if s["frontend"] else "no servers")),
                     "?" if containers is None else str(len(containers))
                     + (f" ({waiting} not ready)" if waiting else ""), lbs, task_text))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    leader = report["leader"]
    if leader is None:
        lines.append("\nleader: ? (central Redis unreachable)")
    elif leader["id"] is None:
        lines.append("\nleader: none")
    else:
        age = leader["heartbeatAgeSeconds"]
        lines.append(f"\nleader: {leader['id']} ({leader['state']}), zone {leader['zone'] or '-'}, "
                     f"heartbeat {'?' if age is None else f'{age:.1f}s'} ago, "
                     f"epoch {leader['epoch'] if leader['epoch'] is not None else '- (Perl/Go record)'}")
    refused = (leader or {}).get("awsEventsRefused") or {}
    if refused:
        lines.append("AWS events refused: " + ", ".join(f"{reason} {n}" for reason, n in refused.items()))
    lines.append(f"this host: {report['instanceId'] or '?'} in {report['zone'] or '?'}"
                 + (f", DRAINING ({report['draining']})" if report.get("draining") else ""))
    if report.get("sourceProblem"):
        lines.append(f"service source: {report['sourceProblem']}")
    for problem in report.get("labelProblems") or ():
        lines.append(f"not routed: {problem}")
    for error in report["errors"]:
        lines.append(f"unknown: {error}")
    return "\n".join(lines)


def render_json(report: dict) -> str:
    """The documented JSON form."""
    return json.dumps(report, indent=2, sort_keys=True)


def unhealthy(report: dict) -> list[str]:
    """Why this host is unhealthy, for ``status --check``; empty when it is not: Docker
    or the Redx Redis cannot be read, or a service's routes disagree with its containers
    (a route to no running, unpaused, healthy and ready container of it, or such a
    container with no route)."""
    found = [error for error in report["errors"] if error.startswith(("Docker:", "Redx Redis"))]
    for service in report["services"]:
        routes, containers = service["routes"], service["containers"]
        if routes is None or containers is None:
            continue
        routable = {c["address"]: c for c in containers
                    if c["address"] and not c["paused"] and c["health"] in (None, "healthy")
                    and c["ready"] is not False}
        for route in routes:
            if route not in routable:
                found.append(f"{service['name']}: route {route} points at no running, routable container")
        for address, c in routable.items():
            if address not in routes:
                found.append(f"{service['name']}: container {c['name']} ({address}) has no route")
    return found
