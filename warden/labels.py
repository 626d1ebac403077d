"""Services declared by the containers themselves, through Docker labels (an ECS task
definition's ``dockerLabels`` arrive as such labels).

``<prefix>service`` names the service; with ``<prefix>frontend`` (``host`` or
``host/path/``) and ``<prefix>port`` it defines one, on a container whose service no
file names. Files win: labels on a container of a file-defined service only assign it.
A label-defined service lives while a container declares it. Only the Registrar reads
labels; the Manager scales file-defined services only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Callable, Iterable, Mapping, Optional

from warden.model import Container
from warden.names import frontend_parts, frontend_problem, name_problem
from warden.services import (DEFINING_LABELS, Service, defining_labels, parse_port, parse_readiness,
                             parse_target_mode)


@dataclass(frozen=True)
class LabelProblem:
    """Why a container's labels define no route: the container and the label."""

    container: str
    label: str
    message: str

    def __str__(self) -> str:
        return f"container {self.container}: label {self.label}: {self.message}"


def _port(value: str, label: str, name: str) -> tuple[Optional[int], Optional[LabelProblem]]:
    port, problem = parse_port(value)
    if problem is None:
        return port, None
    return None, LabelProblem(name, label, f"{value!r} is not a port number from 1 to 65535")


def service_from_labels(container: Container, prefix: str) -> tuple[Optional[Service], Optional[LabelProblem]]:
    """The service ``container``'s labels define, or ``(None, None)`` when they define
    none (no labels, or ``service`` alone: an assignment), or ``(None, problem)``."""
    labels = container.labels
    name = labels.get(prefix + "service")
    if name is None or not any(prefix + key in labels for key in DEFINING_LABELS):
        return None, None
    who = f"{container.name} ({container.short_id})"
    if not name.strip():
        return None, LabelProblem(who, prefix + "service", "is empty")
    for label, value in (("service", name), ("backend", labels.get(prefix + "backend"))):
        problem_text = value is not None and value.strip() and name_problem(value.strip())
        if problem_text:
            return None, LabelProblem(who, prefix + label, problem_text)
    for required in ("frontend", "port"):
        if prefix + required not in labels:
            return None, LabelProblem(who, prefix + required, "is required to define a service by labels")
    frontend = labels[prefix + "frontend"].strip()
    problem_text = frontend_problem(frontend)
    if problem_text:
        return None, LabelProblem(who, prefix + "frontend", problem_text)
    host, path = frontend_parts(frontend)
    port, problem = _port(labels[prefix + "port"], prefix + "port", who)
    if problem:
        return None, problem
    fields: dict = {"load_balancer_url": host, "site": path}
    if prefix + "target-port" in labels:
        fields["target_port"], problem = _port(labels[prefix + "target-port"], prefix + "target-port", who)
        if problem:
            return None, problem
    published = labels.get(prefix + "published-port", "false").strip().lower()
    if published not in ("true", "false"):
        return None, LabelProblem(who, prefix + "published-port", f"{published!r} must be true or false")
    readiness = labels.get(prefix + "readiness", "tcp").strip()
    # The label's http:/path is the service field's {"http": "/path"}, checked alike.
    fields["readiness"], problem = parse_readiness(
        {"http": readiness[len("http:"):]} if readiness.startswith("http:") else readiness)
    if problem:
        return None, LabelProblem(who, prefix + "readiness",
                                  f"{readiness!r} must be tcp, none or http:/path")
    target_group = labels.get(prefix + "target-group", "").strip()
    if target_group and not target_group.startswith("arn:"):
        return None, LabelProblem(who, prefix + "target-group", f"{target_group!r} is not an ARN")
    if prefix + "target-mode" in labels:
        fields["target_mode"], problem_text = parse_target_mode(labels[prefix + "target-mode"])
        if problem_text or (fields["target_mode"] == "container" and not target_group):
            return None, LabelProblem(who, prefix + "target-mode",
                                      f"{labels[prefix + 'target-mode']!r} must be host, or container "
                                      f"with {prefix}target-group")
    return Service(
        name=name.strip(), port=port or 0,
        backend_name=labels.get(prefix + "backend", "").strip() or name.strip(),
        network=labels.get(prefix + "network", "").strip(),
        published_port=published == "true",
        load_balancer_name=labels.get(prefix + "load-balancer", "").strip(),
        target_group_arn=target_group, label_members="any",
        definition=defining_labels(labels, prefix),
        source=f"labels of container {who}", **fields), None


@dataclass(frozen=True)
class LabelServices:
    """The services the running containers define by labels, and the containers whose
    labels are refused: container id -> its problem."""

    services: tuple[Service, ...] = ()
    refused: Mapping[str, LabelProblem] = field(default_factory=dict)


def _host_first(text: str) -> str:
    """``host/path`` with the host in lower case (host names match in any case; paths
    do not)."""
    host, slash, path = text.partition("/")
    return host.lower() + slash + path


@dataclass(frozen=True)
class LabelPolicy:
    """What the operator lets containers define: shell-style patterns of frontends
    (``host/path``, matched whole) and of load-balancer names and target-group ARNs.
    Empty: nothing. A frontend on the host of a file-defined frontend needs a pattern
    that names that host without a wildcard."""

    frontends: tuple[str, ...] = ()
    load_balancers: tuple[str, ...] = ()

    @classmethod
    def of(cls, config: Any) -> "LabelPolicy":
        return cls(tuple(config.label_frontends), tuple(config.label_load_balancers))

    def frontend_problem(self, service: Service, file_hosts: Mapping[str, str]) -> Optional[str]:
        frontend = _host_first(service.frontend)
        if not self.frontends:
            return (f"frontend {service.frontend!r} refused: labelFrontends allows no frontend "
                    "(list there the patterns of the frontends containers may define)")
        allowing = [p for p in self.frontends if fnmatchcase(frontend, _host_first(p))]
        if not allowing:
            return (f"frontend {service.frontend!r} matches no labelFrontends pattern "
                    f"({', '.join(self.frontends)})")
        host = service.load_balancer_url.lower()
        owner = file_hosts.get(host)
        if owner is not None and not any(_host_first(p).partition("/")[0] == host for p in allowing):
            return (f"frontend {service.frontend!r} is on the host of service {owner!r}; only a "
                    f"labelFrontends pattern that names {host!r} itself allows it")
        return None

    def load_balancer_problem(self, what: str, value: str) -> Optional[str]:
        if any(fnmatchcase(value, p) for p in self.load_balancers):
            return None
        if not self.load_balancers:
            return f"{what} {value!r} refused: labelLoadBalancers allows none"
        return f"{what} {value!r} matches no labelLoadBalancers pattern ({', '.join(self.load_balancers)})"

    def problem(self, service: Service, file_hosts: Mapping[str, str],
                prefix: str) -> Optional[tuple[str, str]]:
        """The label and the reason the operator's patterns refuse ``service``, or None."""
        problem = self.frontend_problem(service, file_hosts)
        if problem:
            return prefix + "frontend", problem
        for label, what, value in (("load-balancer", "load balancer", service.load_balancer_name),
                                   ("target-group", "target group", service.target_group_arn)):
            problem = value and self.load_balancer_problem(what, value)
            if problem:
                return prefix + label, problem
        return None


#: ``objection(service)``: why a store refuses to hand ``service`` its keys (they hold
#: what Warden did not write), as ``(label, reason)``, or None
Objection = Callable[[Service], Optional[tuple[str, str]]]


def label_services(containers: Iterable[Container], files: Iterable[Service], prefix: str,
                   policy: LabelPolicy = LabelPolicy(), objection: Optional[Objection] = None,
                   standing: Iterable[Service] = ()) -> LabelServices:
    """What the ``containers``' labels define beside the file-defined ``files``. Files
    win; among containers, the first created stands: a later one that defines the same
    service differently, or claims a frontend or backend another service owns, is
    refused. A new definition must also pass the operator's ``policy`` and then the
    ``objection`` of the stores (skipped for the definitions already ``standing``:
    what they hold, Warden wrote)."""
    files = list(files)
    standing = set(standing)
    file_names = {s.name for s in files}
    frontends = {s.frontend: s.name for s in files if s.frontend}
    file_hosts = {s.load_balancer_url.lower(): s.name for s in files if s.frontend}
    backends = {s.backend_name: s.name for s in files}
    defined: dict[str, Service] = {}
    refused: dict[str, LabelProblem] = {}
    for container in sorted(containers, key=lambda c: (c.created, c.id)):
        service, problem = service_from_labels(container, prefix)
        if problem is not None:
            refused[container.id] = problem
            continue
        if service is None or service.name in file_names:
            continue  # no definition, or files win: the label only assigns it
        who = f"{container.name} ({container.short_id})"
        same = defined.get(service.name)
        if same is not None:
            if same != service:
                refused[container.id] = LabelProblem(
                    who, prefix + "service", f"defines service {service.name!r} differently from "
                                             f"{same.source}, whose definition stands")
            continue
        owner = frontends.get(service.frontend)
        if owner is not None:
            refused[container.id] = LabelProblem(
                who, prefix + "frontend", f"frontend {service.frontend!r} belongs to service {owner!r}")
            continue
        owner = backends.get(service.backend_name)
        if owner is not None:
            refused[container.id] = LabelProblem(
                who, prefix + "backend", f"backend {service.backend_name!r} belongs to service {owner!r}")
            continue
        refusal = policy.problem(service, file_hosts, prefix)
        if refusal is None and objection is not None and service not in standing:
            refusal = objection(service)
        if refusal is not None:
            refused[container.id] = LabelProblem(who, *refusal)
            continue
        defined[service.name] = service
        frontends[service.frontend] = service.name
        backends[service.backend_name] = service.name
    return LabelServices(tuple(defined[n] for n in sorted(defined)), refused)

