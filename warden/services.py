"""Service descriptions: which containers belong to which Redx backend and load balancer.

A superset of the Perl/Go Warden's format. They come from one file, or a folder whose
``*.json`` files each hold one service object or an array of them. A folder reloads per
file: a broken file keeps its last good version while the others load.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from urllib.parse import quote
from typing import Any, Callable, Mapping, Optional, Protocol

from warden import jsonfile
from warden.jsonfile import KeyedObject, Problem, any_case, in_range, is_int, unknown_key
from warden.names import UnsafeName, frontend_parts, frontend_problem, name_problem
from warden.model import Attachment, Container, ContainerTarget, LoadBalancerTarget
from warden.policy import MAX_TASKS, STEPS_RULE, Policy, is_task_count, valid_steps

logger = logging.getLogger(__name__)

#: the label that ties a container to one service by name
SERVICE_LABEL = "warden.service"
#: labels (after the prefix) that make ``service`` a definition, not only an assignment
DEFINING_LABELS = ("frontend", "port", "backend", "network", "published-port", "readiness",
                   "load-balancer", "target-group", "target-port", "target-mode")


def defining_labels(labels: Mapping[str, str], prefix: str) -> tuple[tuple[str, str], ...]:
    """The defining labels ``labels`` carry (prefixed, values stripped), sorted: two
    containers carrying the same define a label-defined service the same way."""
    return tuple(sorted((prefix + key, labels[prefix + key].strip())
                        for key in DEFINING_LABELS if prefix + key in labels))


@dataclass(frozen=True)
class MetricSpec(Mapping):
    """A service's ``metric`` object, checked and read-only: its ``type``, and every
    setting by its lower-case name (a metric class reads ``spec.get("key")``)."""

    type: str
    settings: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.settings[key]

    def __iter__(self) -> Any:
        return iter(self.settings)

    def __len__(self) -> int:
        return len(self.settings)


@dataclass(frozen=True)
class RunTask:
    """A service's ``runTask`` object: extra RunTask parameters, spelled as the ECS API
    spells them."""

    parameters: Mapping[str, Any]


#: runTask keys (lower case) -> the RunTask parameter each one is
RUN_TASK_PARAMETERS = {
    "launchtype": "launchType", "networkconfiguration": "networkConfiguration",
    "capacityproviderstrategy": "capacityProviderStrategy", "platformversion": "platformVersion",
    "placementconstraints": "placementConstraints", "placementstrategy": "placementStrategy",
    "group": "group", "overrides": "overrides", "enableecsmanagedtags": "enableECSManagedTags",
    "propagatetags": "propagateTags",
}


def _as_spelled(value: Any) -> Any:
    """Plain JSON again, with the keys spelled as the user wrote them (the
    case-insensitive reader lower-cased them)."""
    if isinstance(value, dict):
        spelled = getattr(value, "spelled", lambda k: k)
        return {spelled(k): _as_spelled(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_spelled(v) for v in value]
    return value


@dataclass(frozen=True)
class Readiness:
    """When a container without a Docker health check may be routed: ``tcp`` once a
    TCP connect to its own address and port succeeds, ``http`` once a GET of ``path``
    answers below 500, ``none`` at once."""

    kind: str = "tcp"
    path: str = ""

    def __str__(self) -> str:
        return f'{{"http": "{self.path}"}}' if self.kind == "http" else f'"{self.kind}"'


@dataclass(frozen=True)
class Service:
    """One service description."""

    name: str
    port: int
    backend_name: str = ""
    container_name: str = ""
    load_balancer_name: str = ""
    load_balancer_url: str = ""
    site: str = ""
    task_name: str = ""
    task_version: str = ""
    network: str = ""
    published_port: bool = False
    target_group_arn: str = ""
    target_port: int = 80
    #: the HAProxy backend of its servers (the haproxy handler); "": ``backend_name``
    haproxy_backend: str = ""
    #: ``"host"``: the instance is one target of ``targetGroupArn`` (on ``targetPort``)
    #: while a container of the service is routed here; ``"container"``: each routed
    #: container is a target of its own
    target_mode: str = "host"
    cluster: str = ""
    readiness: Readiness = Readiness()
    #: ``"any"``: a container labelled with this service's name joins it whatever its
    #: image or name; ``"matching"`` (the default): the label only picks this service
    #: among those whose ``containerName`` the container matches
    label_members: str = "matching"
    #: a label-defined service's defining labels (prefixed, values stripped), as the
    #: container that defined it carries them: another container joins it only by
    #: carrying the same
    definition: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    metric: Optional[MetricSpec] = field(default=None, compare=False)
    scaling: Optional[Policy] = field(default=None, compare=False)
    run_task: Optional[RunTask] = field(default=None, compare=False)
    #: the file it came from, as the user sees the path
    source: str = field(default="", compare=False)
    #: where in the file: ``""`` for a lone object, ``"[2]."`` for an array entry
    where: str = field(default="", compare=False)
    #: lower-case key -> the key as the user spelled it
    spelling: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def field_name(self, lower: str, default: str) -> str:
        """A field as ``validate`` names it: ``[i].`` prefix, the user's spelling."""
        return self.where + dict(self.spelling).get(lower, default)

    @property
    def frontend(self) -> str:
        """The frontend key without its ``frontend:`` prefix; empty for none."""
        return f"{self.load_balancer_url}{self.site}" if self.load_balancer_url else ""

    @property
    def targets(self) -> tuple[LoadBalancerTarget, ...]:
        """The load balancers and target groups this service enrols the host in."""
        found = []
        if self.load_balancer_name:
            found.append(LoadBalancerTarget("elb", self.load_balancer_name))
        if self.target_group_arn and self.target_mode == "host":
            found.append(LoadBalancerTarget("targetgroup", self.target_group_arn, self.target_port))
        return tuple(found)

    @property
    def member_group(self) -> str:
        """The target group each routed container joins (``targetMode: "container"``),
        or ``""``."""
        return self.target_group_arn if self.target_mode == "container" else ""

    def member_of(self, container: Container) -> Optional[ContainerTarget]:
        """``container`` as a target of :attr:`member_group`: its own address and
        ``port``, and the host port published for ``port`` (0 when none)."""
        if not self.member_group:
            return None
        ip, _ = self.own_address_of(container)
        return ContainerTarget(self.member_group, container.id, ip or "", self.port,
                               container.host_port(self.port) or 0, self.name)

    def claims(self, container: Container, service_label: str = SERVICE_LABEL) -> bool:
        """Does ``container`` belong to this service? ``containerName`` as a substring
        of the image reference or the container's name; a ``service_label`` (by default
        ``warden.service``) narrows, never widens: it keeps only the service it names
        among those that match. A file's service with ``labelMembers: "any"`` takes a
        container by the label alone; a label-defined one only a container that defines
        it the same way (the same defining labels)."""
        label = container.labels.get(service_label)
        matches = bool(self.container_name) and (self.container_name in container.image
                                                 or self.container_name in container.name)
        if label is None:
            return matches
        if label != self.name:
            return False
        if self.definition:
            return defining_labels(container.labels, service_label[:-len("service")]) == self.definition
        return matches or self.label_members == "any"

    def address_of(self, container: Container, host_address: str) -> tuple[Optional[str], str]:
        """The ``ip:port`` to route to ``container``, or ``(None, why not)``."""
        if self.published_port:
            host_port = container.host_port(self.port)
            if host_port is None:
                return None, f"port {self.port} is not published on the host"
            return f"{host_address}:{host_port}", ""
        ip, why = self.own_address_of(container)
        if ip is None:
            return None, why
        return (f"[{ip}]:{self.port}" if ":" in ip else f"{ip}:{self.port}"), ""

    def own_address_of(self, container: Container) -> tuple[Optional[str], str]:
        """The container's own IP (v4 before v6) on the service's network, else the
        default bridge, else its first network by name; or ``(None, why not)``. Its
        readiness is probed there, even for a published port: the engine's proxy
        accepts on the host port before the process behind it listens."""
        attachment: Optional[Attachment]
        if self.network:
            attachment = container.attachment(self.network)
            if attachment is None:
                return None, f"not attached to network {self.network!r}"
        else:
            attachment = container.attachment("bridge")
            if attachment is None or not (attachment.ipv4 or attachment.ipv6):
                named = sorted((a for a in container.attachments if a.ipv4 or a.ipv6),
                               key=lambda a: a.network)
                attachment = named[0] if named else None
            if attachment is None:
                return None, "has no network address"
        if attachment.ipv4 or attachment.ipv6:
            return attachment.ipv4 or attachment.ipv6, ""
        return None, f"has no address on network {attachment.network!r}"


def _string(value: Any) -> tuple[Any, Optional[str]]:
    if value is None:
        return "", None
    return (value, None) if isinstance(value, str) else (None, "must be a string")


#: ASCII digits only: ``str.isdigit`` is also true of "²", which ``int`` refuses
DIGITS = re.compile(r"[0-9]+")


def parse_port(value: Any) -> tuple[Any, Optional[str]]:
    if isinstance(value, str) and DIGITS.fullmatch(value.strip()):
        value = int(value.strip())
    if not is_int(value):
        return None, "must be a port number (a number or a string of digits)"
    if not 0 < value < 65536:
        return None, "must be a port number from 1 to 65535"
    return value, None


def _version(value: Any) -> tuple[Any, Optional[str]]:
    if value is None:
        return "", None
    if is_int(value) or isinstance(value, str):
        return str(value), None
    return None, "must be a number or a string"


def _bool(value: Any) -> tuple[Any, Optional[str]]:
    return (value, None) if isinstance(value, bool) else (None, "must be true or false")


def _object(value: Any) -> tuple[Any, Optional[str]]:
    if value is None:
        return None, None
    return (dict(value), None) if isinstance(value, dict) else (None, "must be an object")


#: what a readiness path keeps as it is: RFC 3986's path, query and reserved
#: characters, and ``%`` (a path already percent-encoded stays so)
_PATH_SAFE = "/%:@!$&'()*+,;=?~"


def parse_target_mode(value: Any) -> tuple[Any, Optional[str]]:
    if isinstance(value, str) and value.strip().lower() in ("host", "container"):
        return value.strip().lower(), None
    return None, 'must be "host" or "container"'


def _label_members(value: Any) -> tuple[Any, Optional[str]]:
    if isinstance(value, str) and value.lower() in ("any", "matching"):
        return value.lower(), None
    return None, 'must be "matching" or "any"'


def parse_readiness(value: Any) -> tuple[Any, Optional[str]]:
    if isinstance(value, str) and value.lower() in ("tcp", "none"):
        return Readiness(value.lower()), None
    if isinstance(value, dict) and list(value) == ["http"]:
        path = value["http"]
        if isinstance(path, str) and path.startswith("/") and not any(c.isspace() for c in path):
            # An HTTP request line is ASCII: "/santé" is sent as "/sant%C3%A9".
            return Readiness("http", quote(path, safe=_PATH_SAFE)), None
        return None, 'has an http path that must start with "/" and hold no spaces'
    return None, 'must be "tcp", "none" or {"http": "/path"}'


#: lower-case key -> (Service attribute, converter returning (value, problem))
_FIELDS: dict[str, tuple[str, Callable[[Any], tuple[Any, Optional[str]]]]] = {
    "name": ("name", _string),
    "backendname": ("backend_name", _string),
    "containername": ("container_name", _string),
    "loadbalancername": ("load_balancer_name", _string),
    "loadbalancerurl": ("load_balancer_url", _string),
    "port": ("port", parse_port),
    "site": ("site", _string),
    "taskname": ("task_name", _string),
    "taskversion": ("task_version", _version),
    "network": ("network", _string),
    "publishedport": ("published_port", _bool),
    "targetgrouparn": ("target_group_arn", _string),
    "targetport": ("target_port", parse_port),
    "targetmode": ("target_mode", parse_target_mode),
    "haproxybackend": ("haproxy_backend", _string),
    "cluster": ("cluster", _string),
    "readiness": ("readiness", parse_readiness),
    "labelmembers": ("label_members", _label_members),
    "metric": ("metric", _object),
    "scaling": ("scaling", _object),
    "runtask": ("run_task", _object),
}

#: the service keys as the README spells them (for "did you mean")
SERVICE_KEYS = ("name", "backendName", "containerName", "loadBalancerName", "loadBalancerUrl", "port",
                "site", "taskName", "taskVersion", "network", "publishedPort", "targetGroupArn",
                "targetPort", "targetMode", "haproxyBackend", "cluster", "readiness", "labelMembers", "metric", "scaling", "runTask")

#: settings each built-in metric type needs (a plugin checks its own when read)
METRIC_SETTINGS = {
    "static": ("value",), "redis": ("key",), "elasticbeanstalk": ("environmentName",),
    "cloudwatch": ("namespace", "metricName"), "sqs": ("queueUrl",),
}


def _check_metric(file: str, where: str, obj: KeyedObject) -> list[Problem]:
    from importlib.metadata import entry_points

    problems = jsonfile.duplicate_problems(file, where + ".", obj)
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind:
        problems.append(Problem(file, f"{where}.{obj.spelled('type')}", "must name the metric type"))
        return problems
    known = {ep.name for ep in entry_points(group="warden.metrics")}
    kind = any_case(kind, known)
    if kind not in known:
        problems.append(Problem(file, f"{where}.{obj.spelled('type')}",
                                f"unknown metric type {kind!r} (known: {', '.join(sorted(known))})"))
    for setting in METRIC_SETTINGS.get(kind, ()):
        if obj.get(setting.lower()) in (None, ""):
            problems.append(Problem(file, f"{where}.{setting}", f"is required for a {kind} metric"))
    return problems


def _check_scaling(file: str, where: str, obj: KeyedObject) -> list[Problem]:
    problems = jsonfile.duplicate_problems(file, where + ".", obj)
    steps = obj.get("steps")
    if steps is not None:
        field_name = f"{where}.{obj.spelled('steps')}"
        if not valid_steps(steps):
            problems.append(Problem(file, field_name, STEPS_RULE))
    for key in ("mintasks", "maxtasks", "maxstep"):
        value = obj.get(key)
        if value is not None and not is_task_count(value):
            problems.append(Problem(file, f"{where}.{obj.spelled(key)}",
                                    f"must be a whole number from 0 to {MAX_TASKS}"))
    low, high = obj.get("mintasks"), obj.get("maxtasks")
    if is_int(low) and is_int(high) and low > high:
        problems.append(Problem(file, f"{where}.{obj.spelled('mintasks')}",
                                f"is more than {obj.spelled('maxtasks')} ({high})"))
    delay = obj.get("scaledowndelayseconds")
    if delay is not None and not in_range(delay, 0, 86400):
        problems.append(Problem(file, f"{where}.{obj.spelled('scaledowndelayseconds')}",
                                "must be a number of seconds from 0 to 86400"))
    url = obj.get("stepsurl")
    if url is not None and (not isinstance(url, str) or not url):
        problems.append(Problem(file, f"{where}.{obj.spelled('stepsurl')}",
                                "must be a path or an s3://bucket/key URL"))
    return problems


def _check_ceiling(file: str, where: str, obj: KeyedObject) -> list[Problem]:
    """A metric without steps asks for the metric itself, rounded up: without
    ``maxTasks`` a garbage value (1e6 in a Redis key) would start that many tasks."""
    scaling = obj.get("scaling") if isinstance(obj.get("scaling"), KeyedObject) else None
    if scaling is not None and (scaling.get("steps") or scaling.get("stepsurl")
                                or scaling.get("maxtasks") is not None):
        return []
    prefix = f"{where}{obj.spelled('scaling')}." if scaling is not None else f"{where}scaling."
    spelled = scaling.spelling.get("maxtasks", "maxTasks") if scaling is not None else "maxTasks"
    return [Problem(file, prefix + spelled, "is required when the scaling has no steps "
                                            "(a metric alone could ask for any number of tasks)")]


#: a target group's ARN: arn:PARTITION:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID
TARGET_GROUP_ARN = re.compile(r"arn:aws[a-z-]*:elasticloadbalancing:[a-z0-9-]+:[0-9]{12}:"
                              r"targetgroup/[A-Za-z0-9-]{1,32}/[0-9a-f]{16}")
#: a containerName shorter than this is a substring of nearly every image and name
SHORTEST_CONTAINER_NAME = 3


def _cross_checks(file: str, where: str, obj: KeyedObject, values: dict[str, Any]) -> list[Problem]:
    """What the fields say together, or what a well-formed value cannot mean."""
    problems = []
    # One grammar for every name that reaches another program's language (see
    # warden.names), whether the service came from a file, S3, SSM or labels.
    for attr, lower, spelled in (("name", "name", "name"), ("backend_name", "backendname", "backendName"),
                                 ("haproxy_backend", "haproxybackend", "haproxyBackend")):
        value = values.get(attr)
        if value and name_problem(value):
            problems.append(Problem(file, where + obj.spelling.get(lower, spelled), name_problem(value)))
    if values.get("load_balancer_url"):
        frontend = values["load_balancer_url"] + values.get("site", "")
        problem = frontend_problem(frontend)
        if problem:
            try:
                frontend_parts(values["load_balancer_url"])
                lower, spelled = "site", "site"
            except UnsafeName:
                lower, spelled = "loadbalancerurl", "loadBalancerUrl"
            problems.append(Problem(file, where + obj.spelling.get(lower, spelled), problem))
    if values.get("metric") is not None and not values.get("task_name"):
        problems.append(Problem(file, where + obj.spelling.get("taskname", "taskName"),
                                "is required with a metric: it names the task definition the leader runs"))
    arn = values.get("target_group_arn")
    if arn and not TARGET_GROUP_ARN.fullmatch(arn):
        problems.append(Problem(file, where + obj.spelled("targetgrouparn"),
                                "must be a target group ARN "
                                "(arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID)"))
    if values.get("target_mode") == "container" and not arn:
        problems.append(Problem(file, where + obj.spelled("targetmode"),
                                '"container" needs a targetGroupArn: each container is a target of that group'))
    name = values.get("container_name")
    if name and len(name) < SHORTEST_CONTAINER_NAME:
        problems.append(Problem(file, where + obj.spelled("containername"),
                                f"{name!r} is part of nearly every image and container name: give at "
                                f"least {SHORTEST_CONTAINER_NAME} characters, or label the containers",
                                warning=True))
    return problems


def parse_service(file: str, where: str, obj: Any) -> tuple[Optional[Service], list[Problem]]:
    """Build one Service from a parsed JSON object; ``where`` prefixes field names
    (``""`` for a file holding one object, ``"[2]."`` for an array entry)."""
    if not isinstance(obj, KeyedObject):
        return None, [Problem(file, where.rstrip(".") or "-", "must be a service object")]
    problems = jsonfile.duplicate_problems(file, where, obj)
    values: dict[str, Any] = {}
    for lower, spelled, raw in obj.items_spelled():
        if lower not in _FIELDS:
            problems.append(Problem(file, where + spelled, unknown_key(spelled, SERVICE_KEYS), warning=True))
            continue
        attr, convert = _FIELDS[lower]
        value, problem = convert(raw)
        if problem:
            problems.append(Problem(file, where + spelled, problem))
            continue
        values[attr] = value
        if lower == "metric" and value is not None:
            problems += _check_metric(file, where + spelled, raw)
        if lower == "scaling" and value is not None:
            problems += _check_scaling(file, where + spelled, raw)
    if values.get("metric") is not None:
        problems += _check_ceiling(file, where, obj)
    if values.get("run_task") is not None:
        raw = obj.get("runtask")
        for lower in raw:
            if lower not in RUN_TASK_PARAMETERS:
                problems.append(Problem(file, f"{where}{obj.spelled('runtask')}.{raw.spelled(lower)}",
                                        "unknown RunTask parameter, ignored", warning=True))
    for required in ("name", "port"):
        if not values.get(required):
            if not any(p.field == where + obj.spelled(required) for p in problems):
                problems.append(Problem(file, where + obj.spelled(required), "is required"))
    problems += _cross_checks(file, where, obj, values)
    if any(not p.warning for p in problems):
        return None, problems
    # Parsed once, here: the Scaler and the ECS handler get records, not raw objects.
    if values.get("metric") is not None:
        values["metric"] = MetricSpec(str(values["metric"]["type"]), MappingProxyType(values["metric"]))
    if values.get("scaling") is not None or values.get("metric") is not None:
        values["scaling"] = Policy.from_spec(values.get("scaling"))
    if values.get("run_task") is not None:
        values["run_task"] = RunTask(MappingProxyType(
            {RUN_TASK_PARAMETERS[k]: (v.upper() if k == "launchtype" and isinstance(v, str) else _as_spelled(v))
             for k, v in values["run_task"].items() if k in RUN_TASK_PARAMETERS}))
    values.setdefault("backend_name", "")
    if not values["backend_name"]:
        values["backend_name"] = values["name"]
    return Service(source=file, where=where, spelling=tuple(obj.spelling.items()), **values), problems


def _naming(problem: Problem, name: str) -> Problem:
    """``problem`` of an array entry, saying which service it is about: the field is
    located by index (``[2].port``, as the Perl/Go tools' users know it), which alone
    makes the reader count entries in a long file."""
    return replace(problem, message=f"{problem.message} (service {name!r})")


def _named(problems: list[Problem], entry: Any) -> list[Problem]:
    """An array entry's problems, each naming its service (when it has a name)."""
    name = entry.get("name") if isinstance(entry, KeyedObject) else None
    if not isinstance(name, str) or not name.strip():
        return problems
    return [_naming(p, name) for p in problems]


def parse_file(path: str, display: str) -> tuple[Optional[list[Service]], list[Problem]]:
    """Every service in one file, or None with the problems when the file is broken."""
    try:
        data = jsonfile.load(path)
    except jsonfile.JsonFileError as error:
        return None, [Problem(display, "-", str(error))]
    return parse_document(data, display)


def parse_text(text: str, display: str) -> tuple[Optional[list[Service]], list[Problem]]:
    """The same for a document read from elsewhere (an S3 object, an SSM parameter)."""
    try:
        data = jsonfile.loads(text)
    except jsonfile.JsonFileError as error:
        return None, [Problem(display, "-", str(error))]
    return parse_document(data, display)


def parse_document(data: Any, display: str) -> tuple[Optional[list[Service]], list[Problem]]:
    """Every service in one parsed document, or None with the problems when it is broken."""
    entries = [("", data)] if not isinstance(data, list) else [(f"[{i}].", d) for i, d in enumerate(data)]
    if not isinstance(data, (list, KeyedObject)):
        return None, [Problem(display, "-", "must hold a service object or an array of them")]
    services, problems = [], []
    for where, entry in entries:
        service, found = parse_service(display, where, entry)
        problems += _named(found, entry) if where else found
        if service is not None:
            services.append(service)
    if any(not p.warning for p in problems):
        return None, problems
    return services, problems


def _about(service: Service, lower: str, default: str, message: str, warning: bool = False) -> Problem:
    """A problem with one of ``service``'s fields, located as ``validate`` locates it
    (an array entry's named too)."""
    problem = Problem(service.source, service.field_name(lower, default), message, warning)
    return _naming(problem, service.name) if service.where.startswith("[") else problem


def conflicts(standing: list[Service], newcomers: list[Service]) -> list[Problem]:
    """Problems the ``newcomers`` bring among the ``standing`` services: a name used
    twice, or one frontend key claimed for two different backends (errors), or two
    ``containerName``s one inside the other (a warning). The newcomers are the ones
    named: what stands is never blamed."""
    problems = []
    names: dict[str, Service] = {s.name: s for s in reversed(standing)}
    frontends: dict[str, Service] = {s.frontend: s for s in reversed(standing) if s.frontend}
    for service in newcomers:
        if service.name in names:
            problems.append(_about(service, "name", "name",
                                   f"service {service.name!r} is also defined in {names[service.name].source}"))
        names.setdefault(service.name, service)
        key = service.frontend
        if key and key in frontends and frontends[key].backend_name != service.backend_name:
            other = frontends[key]
            problems.append(_about(service, "loadbalancerurl", "loadBalancerUrl",
                                   f"frontend {key!r} is already claimed by service {other.name!r} "
                                   f"({other.source}) for backend {other.backend_name!r}"))
        if key:
            frontends.setdefault(key, service)
        for other in list(names.values()):
            mine, theirs = service.container_name, other.container_name
            # A name too short to mean anything has its own warning (see _cross_checks).
            if other.name == service.name or min(len(mine), len(theirs)) < SHORTEST_CONTAINER_NAME \
                    or (mine not in theirs and theirs not in mine):
                continue
            longer = max(mine, theirs, key=len)
            problems.append(_about(service, "containername", "containerName",
                                   f"overlaps containerName {theirs!r} of service {other.name!r} "
                                   f"({other.source}): a container whose image or name holds {longer!r} "
                                   f"belongs to both; label such containers {SERVICE_LABEL}", warning=True))
    return problems


class SourceError(Exception):
    """A service source (S3, SSM) could not be read this time; the message says why."""


class SourceReader(Protocol):
    """Where service documents come from when they are not files."""

    def read(self) -> Optional[dict[str, str]]:
        """Every document now at the source, by the name a problem line shows
        (``s3://bucket/prefix/web.json``); None when the source itself is missing;
        :class:`SourceError` when it cannot be read now."""


class ServiceCatalog:
    """The services in force, reloaded file by file.

    - A broken file keeps its last good version.
    - A changed file that conflicts with the services in force is rejected (it keeps its
      last good version), whatever the files' sort order: the file that changed is the
      one blamed, and the services in force never conflict.
    - A missing file or folder keeps the last good services (an error says so); ``[]``
      in the file is the way to retire everything. Inside a folder, a file that
      disappears is acted on only once it has stayed gone ``gone_grace_seconds``, so an
      editor's or ``git checkout``'s non-atomic replace never flaps routes.

    :attr:`services` is an immutable snapshot, replaced whole by each load, so readers
    on other threads never see a load half done.
    """

    #: seconds a file must stay gone from the folder before its services are retired
    gone_grace_seconds = 2.0

    def __init__(self, path: str, display: str, reader: Optional[SourceReader] = None) -> None:
        self.path = path
        self.display = display
        #: where the documents come from when they are not files (S3, SSM)
        self.reader = reader
        self._good: dict[str, list[Service]] = {}
        self._gone_since: dict[str, float] = {}
        self._services: tuple[Service, ...] = ()
        self._lock = threading.Lock()
        #: errors found by every load so far (a broken file counts at each load)
        self.errors = 0
        #: why the last load kept the services in force whatever the source said (the
        #: source is missing, or an S3 prefix or SSM path lists nothing), or None
        self.source_problem: Optional[str] = None

    def _files(self) -> list[str]:
        if os.path.isdir(self.path):
            return sorted(glob.glob(os.path.join(self.path, "*.json")))
        return [self.path]

    def _display_of(self, file: str) -> str:
        if self.reader is not None:
            return file
        if os.path.isdir(self.path):
            return os.path.join(self.display, os.path.basename(file))
        return self.display

    def watches(self, file: str) -> bool:
        """Is ``file`` one of the service files (present or not)?"""
        file = os.path.abspath(file)
        if os.path.isdir(self.path):
            return os.path.dirname(file) == self.path and file.endswith(".json")
        return file == self.path

    def load(self) -> tuple[tuple[Service, ...], list[Problem]]:
        """Read every file again. Returns the services in force and the problems
        (errors and warnings) found."""
        with self._lock:
            problems = self._load()
            self._services = tuple(s for file in sorted(self._good) for s in self._good[file])
            self.errors += sum(1 for p in problems if not p.warning)
            return self._services, problems

    def _load(self) -> list[Problem]:
        self.source_problem = None
        if self.reader is not None:
            try:
                documents = self.reader.read()
            except SourceError as error:
                return [Problem(self.display, "-", f"cannot be read ({error}); keeping the "
                                                   f"{len(self._services)} services in force")]
            if documents is None:
                return self._not_found()
            if not documents:
                # An emptied prefix or path is not an order: a document holding [] is.
                return self._kept("lists no service document", "a document holding [] retires them")
            return self._take(sorted(documents), lambda name: parse_text(documents[name], name))
        if not os.path.exists(self.path):
            return self._not_found()
        return self._take(self._files(), lambda file: parse_file(file, self._display_of(file)))

    def _not_found(self) -> list[Problem]:
        return self._kept("not found", "[] in the file retires them")

    def _kept(self, what: str, how_to_retire: str) -> list[Problem]:
        """The source says nothing usable: the services in force stay, and it is said."""
        self.source_problem = f"{self.display}: {what}"
        if not self._good:
            return [Problem(self.display, "-", what)]
        self.source_problem += f"; keeping the {len(self._services)} services in force"
        return [Problem(self.display, "-", f"{what}; keeping the {len(self._services)} "
                                           f"services in force ({how_to_retire})")]

    def _take(self, files: list[str],
              parse: Callable[[str], tuple[Optional[list[Service]], list[Problem]]]) -> list[Problem]:
        """Take the documents ``files`` (names; ``parse`` reads one) into the services in
        force, by the rules in the class docstring."""
        problems: list[Problem] = []
        now = time.monotonic()
        standing = dict(self._good)
        for gone in set(standing) - set(files):
            since = self._gone_since.setdefault(gone, now)
            if now - since >= self.gone_grace_seconds:
                del standing[gone]
                del self._gone_since[gone]
        for file in files:
            self._gone_since.pop(file, None)
        changed: dict[str, list[Service]] = {}
        for file in files:
            loaded, found = parse(file)
            problems += found
            if loaded is None:
                if file in standing:
                    logger.error("%s is broken; keeping its last good version", self._display_of(file))
            elif file not in standing or repr(loaded) != repr(standing[file]):
                changed[file] = loaded
        # What stands never conflicts; each changed file joins only if it keeps it so.
        for file in sorted(changed):
            others = [s for f in sorted(standing) if f != file for s in standing[f]]
            found = conflicts(others, changed[file])
            problems += found
            if any(not p.warning for p in found):
                if file in standing:
                    logger.error("%s conflicts with the services in force; keeping its last "
                                 "good version", self._display_of(file))
                continue
            standing[file] = changed[file]
        self._good = standing
        return problems

    @property
    def services(self) -> tuple[Service, ...]:
        """The services in force, in file order (a snapshot: never changes in place)."""
        return self._services

