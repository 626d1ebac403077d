"""Service descriptions: which containers belong to which Redx backend and load balancer.

A superset of the Perl/Go Warden's format. They come from one file, or a folder whose
``*.json`` files each hold one service object or an array of them. A folder reloads per
file: a broken file keeps its last good version while the others load.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from warden import jsonfile
from warden.jsonfile import KeyedObject, Problem, is_int, is_number
from warden.model import Attachment, Container, LoadBalancerTarget

logger = logging.getLogger(__name__)

#: the label that ties a container to one service by name
SERVICE_LABEL = "warden.service"


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
    cluster: str = ""
    metric: Optional[dict] = field(default=None, compare=False)
    scaling: Optional[dict] = field(default=None, compare=False)
    run_task: Optional[dict] = field(default=None, compare=False)
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
        if self.target_group_arn:
            found.append(LoadBalancerTarget("targetgroup", self.target_group_arn, self.target_port))
        return tuple(found)

    def claims(self, container: Container) -> bool:
        """Does ``container`` belong to this service? The ``warden.service`` label
        decides alone when present; otherwise ``containerName`` as a substring of the
        image reference or the container's name."""
        label = container.labels.get(SERVICE_LABEL)
        if label is not None:
            return label == self.name
        if not self.container_name:
            return False
        return self.container_name in container.image or self.container_name in container.name

    def address_of(self, container: Container, host_address: str) -> tuple[Optional[str], str]:
        """The ``ip:port`` to route to ``container``, or ``(None, why not)``."""
        if self.published_port:
            host_port = container.host_port(self.port)
            if host_port is None:
                return None, f"port {self.port} is not published on the host"
            return f"{host_address}:{host_port}", ""
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
        if attachment.ipv4:
            return f"{attachment.ipv4}:{self.port}", ""
        if attachment.ipv6:
            return f"[{attachment.ipv6}]:{self.port}", ""
        return None, f"has no address on network {attachment.network!r}"


def _string(value: Any) -> tuple[Any, Optional[str]]:
    if value is None:
        return "", None
    return (value, None) if isinstance(value, str) else (None, "must be a string")


def _port(value: Any) -> tuple[Any, Optional[str]]:
    if isinstance(value, str) and value.strip().isdigit():
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


#: lower-case key -> (Service attribute, converter returning (value, problem))
_FIELDS: dict[str, tuple[str, Callable[[Any], tuple[Any, Optional[str]]]]] = {
    "name": ("name", _string),
    "backendname": ("backend_name", _string),
    "containername": ("container_name", _string),
    "loadbalancername": ("load_balancer_name", _string),
    "loadbalancerurl": ("load_balancer_url", _string),
    "port": ("port", _port),
    "site": ("site", _string),
    "taskname": ("task_name", _string),
    "taskversion": ("task_version", _version),
    "network": ("network", _string),
    "publishedport": ("published_port", _bool),
    "targetgrouparn": ("target_group_arn", _string),
    "targetport": ("target_port", _port),
    "cluster": ("cluster", _string),
    "metric": ("metric", _object),
    "scaling": ("scaling", _object),
    "runtask": ("run_task", _object),
}


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
        if not isinstance(steps, list) or not all(
            isinstance(s, list) and len(s) == 2 and is_number(s[0]) and is_int(s[1]) and s[1] >= 0
            for s in steps
        ):
            problems.append(Problem(file, field_name, "must be a list of [threshold, tasks] pairs"))
    for key in ("mintasks", "maxtasks", "maxstep"):
        value = obj.get(key)
        if value is not None and (not is_int(value) or value < 0):
            problems.append(Problem(file, f"{where}.{obj.spelled(key)}", "must be a whole number, 0 or more"))
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
            problems.append(Problem(file, where + spelled, "unknown key, ignored", warning=True))
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
    for required in ("name", "port"):
        if not values.get(required):
            if not any(p.field == where + obj.spelled(required) for p in problems):
                problems.append(Problem(file, where + obj.spelled(required), "is required"))
    if any(not p.warning for p in problems):
        return None, problems
    values.setdefault("backend_name", "")
    if not values["backend_name"]:
        values["backend_name"] = values["name"]
    return Service(source=file, where=where, spelling=tuple(obj.spelling.items()), **values), problems


def parse_file(path: str, display: str) -> tuple[Optional[list[Service]], list[Problem]]:
    """Every service in one file, or None with the problems when the file is broken."""
    try:
        data = jsonfile.load(path)
    except jsonfile.JsonFileError as error:
        return None, [Problem(display, "-", str(error))]
    entries = [("", data)] if not isinstance(data, list) else [(f"[{i}].", d) for i, d in enumerate(data)]
    if not isinstance(data, (list, KeyedObject)):
        return None, [Problem(display, "-", "must hold a service object or an array of them")]
    services, problems = [], []
    for where, entry in entries:
        service, found = parse_service(display, where, entry)
        problems += found
        if service is not None:
            services.append(service)
    if any(not p.warning for p in problems):
        return None, problems
    return services, problems


def cross_check(services: list[Service]) -> list[Problem]:
    """Problems between services: a name used twice, or one frontend key claimed for
    two different backends."""
    problems = []
    names: dict[str, Service] = {}
    frontends: dict[str, Service] = {}
    for service in services:
        if service.name in names:
            problems.append(Problem(service.source, service.field_name("name", "name"),
                                    f"service {service.name!r} is also defined in {names[service.name].source}"))
        names.setdefault(service.name, service)
        key = service.frontend
        if key and key in frontends and frontends[key].backend_name != service.backend_name:
            other = frontends[key]
            problems.append(Problem(
                service.source, service.field_name("loadbalancerurl", "loadBalancerUrl"),
                f"frontend {key!r} is already claimed by service {other.name!r} "
                f"({other.source}) for backend {other.backend_name!r}"))
        if key:
            frontends.setdefault(key, service)
    return problems


class ServiceCatalog:
    """The services in force, reloaded file by file; each file keeps its last good
    version when a new one is broken."""

    def __init__(self, path: str, display: str) -> None:
        self.path = path
        self.display = display
        self._good: dict[str, list[Service]] = {}

    def _files(self) -> list[str]:
        if os.path.isdir(self.path):
            return sorted(glob.glob(os.path.join(self.path, "*.json")))
        return [self.path]

    def _display_of(self, file: str) -> str:
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
        """Read every file again. Broken files keep their last good services; the
        problems (errors and warnings) say which and why."""
        problems: list[Problem] = []
        if not os.path.exists(self.path):
            problems.append(Problem(self.display, "-", "service description file or folder not found"))
            self._good.pop(self.path, None)
            return self.services, problems
        files = self._files()
        previous = dict(self._good)
        for gone in set(self._good) - set(files):
            del self._good[gone]
        for file in files:
            loaded, found = parse_file(file, self._display_of(file))
            problems += found
            if loaded is not None:
                self._good[file] = loaded
            elif file in self._good:
                logger.error("%s is broken; keeping its last good version", self._display_of(file))
        conflicts = cross_check(list(self.services))
        problems += conflicts
        # A file that conflicts with the others is broken too: it goes back to its
        # last good version, so the services in force never conflict.
        for file in {f for f in files if any(p.file == self._display_of(f) for p in conflicts)}:
            if file in previous:
                self._good[file] = previous[file]
            else:
                self._good.pop(file, None)
        return self.services, problems

    @property
    def services(self) -> tuple[Service, ...]:
        """The services in force, in file order."""
        return tuple(s for file in sorted(self._good) for s in self._good[file])


def validate_services(path: str, display: str) -> list[Problem]:
    """Every problem in the service files, for ``warden validate``."""
    catalog = ServiceCatalog(path, display)
    return catalog.load()[1]
