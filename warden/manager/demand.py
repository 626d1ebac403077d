"""Demand metrics: where the Manager reads how many tasks a service needs.

Each type is a small class behind one interface, registered under the entry-point group
``warden.metrics``; a third party adds one the same way. A metric's settings arrive as
the service's ``metric`` object with lower-cased keys (keys are case-insensitive).
A metric that cannot be read raises :class:`MetricError`, and the count holds.
"""

from __future__ import annotations

import logging

from datetime import datetime, timedelta, timezone
from importlib.metadata import entry_points
from typing import Any, Callable, Mapping, Optional

import botocore.config
import botocore.exceptions

from warden.errors import MetricError
from warden.jsonfile import any_case
from warden.runtime import aws

# The name operators filter logs on, kept from before the module moved.
logger = logging.getLogger("warden.metrics")

AWS_CLIENT_CONFIG = botocore.config.Config(connect_timeout=3, read_timeout=5,
                                           retries={"mode": "standard", "max_attempts": 3})


class MetricContext:
    """What metrics may use: the central Redis and AWS clients for the region."""

    def __init__(self, redis_client: Any, region: Optional[str]) -> None:
        self.redis = redis_client
        self.region = region
        self._clients: dict[str, Any] = {}

    def aws(self, service: str) -> Any:
        """A boto3 client with short timeouts and standard retries."""
        if service not in self._clients:
            self._clients[service] = aws.client(service, self.region,
                                                  AWS_CLIENT_CONFIG)
        return self._clients[service]


class Metric:
    """Base of every metric type. Subclasses set ``type`` and implement ``read``."""

    type = ""

    def __init__(self, spec: Mapping[str, Any], context: MetricContext) -> None:
        self.spec = spec
        self.context = context

    def setting(self, key: str) -> Any:
        """A required setting (lower-case key), or :class:`MetricError`."""
        value = self.spec.get(key.lower())
        if value in (None, ""):
            raise MetricError(f"{self.type} metric needs {key}")
        return value

    def read(self) -> float:
        """The metric's value now."""
        raise NotImplementedError


def _number(value: Any, what: str) -> float:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MetricError(f"{what} is not a number: {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise MetricError(f"{what} is not a finite number: {value!r}")
    return number


def _aws_call(what: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except aws.ERRORS as error:
        raise MetricError(f"{what}: {error}") from None


class StaticMetric(Metric):
    """A fixed ``value``."""

    type = "static"

    def read(self) -> float:
        return _number(self.setting("value"), "value")


class RedisMetric(Metric):
    """A number held at ``key`` in the central Redis."""

    type = "redis"

    def read(self) -> float:
        key = self.setting("key")
        try:
            value = self.context.redis.get(key)
        except Exception as error:  # noqa: BLE001 - any Redis failure means unreadable
            raise MetricError(f"redis key {key}: {error}") from None
        if value is None:
            raise MetricError(f"redis key {key} is missing")
        return _number(value, f"redis key {key}")



class ElasticBeanstalkMetric(Metric):
    """The number of running instances of the Elastic Beanstalk environment
    ``environmentName`` (the seed's original metric): EC2 instances carrying the tag
    ``elasticbeanstalk:environment-name`` that Elastic Beanstalk puts on its
    instances. An environment that does not exist, or is terminated, is an error."""

    type = "elasticbeanstalk"

    def read(self) -> float:
        name = self.setting("environmentName")
        reply = _aws_call(f"environment {name}", lambda: self.context.aws(
            "elasticbeanstalk").describe_environments(EnvironmentNames=[name]))
        live = [e for e in reply.get("Environments") or []
                if e.get("EnvironmentName") == name and e.get("Status") not in ("Terminated", "Terminating")]
        if not live:
            raise MetricError(f"environment {name} does not exist")
        paginator = self.context.aws("ec2").get_paginator("describe_instances")
        pages = _aws_call(f"instances of environment {name}", lambda: list(paginator.paginate(
            Filters=[{"Name": "tag:elasticbeanstalk:environment-name", "Values": [name]},
                     {"Name": "instance-state-name", "Values": ["pending", "running"]}])))
        return float(sum(len(r.get("Instances") or []) for page in pages
                         for r in page.get("Reservations") or []))



class CloudWatchMetric(Metric):
    """A statistic of a CloudWatch metric over the last ``periodSeconds``."""

    type = "cloudwatch"

    def dimensions(self) -> list[dict]:
        """``dimensions`` as an object ``{Name: Value}`` or a list of ``{Name, Value}``."""
        raw = self.spec.get("dimensions") or {}
        if isinstance(raw, list):
            return [{"Name": str(d.get("name")), "Value": str(d.get("value"))} for d in raw]
        spelled = getattr(raw, "spelled", lambda k: k)
        return [{"Name": spelled(k), "Value": str(v)} for k, v in raw.items()]

    def read(self) -> float:
        period = int(self.spec.get("periodseconds") or 60)
        statistic = str(self.spec.get("statistic") or "Average")
        now = datetime.now(timezone.utc)
        # The end lies a minute ahead so the period that holds "now" is whole; the
        # latest datapoint of the last period is the reading.
        reply = _aws_call(f"cloudwatch {self.spec.get('metricname')}", lambda: self.context.aws(
            "cloudwatch").get_metric_statistics(
                Namespace=self.setting("namespace"), MetricName=self.setting("metricName"),
                Dimensions=self.dimensions(), StartTime=now - timedelta(seconds=period),
                EndTime=now + timedelta(seconds=60), Period=period, Statistics=[statistic]))
        points = sorted(reply.get("Datapoints") or [], key=lambda p: p["Timestamp"])
        if not points:
            raise MetricError(f"cloudwatch {self.spec.get('metricname')}: no datapoints "
                              f"in the last {period}s")
        return float(points[-1][statistic])



class SqsMetric(Metric):
    """ApproximateNumberOfMessages of the queue ``queueUrl``."""

    type = "sqs"

    def read(self) -> float:
        url = self.setting("queueUrl")
        reply = _aws_call(f"queue {url}", lambda: self.context.aws("sqs").get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]))
        return _number(reply["Attributes"]["ApproximateNumberOfMessages"], "queue length")



def load_metric(spec: Mapping[str, Any], context: MetricContext) -> Metric:
    """The metric for a service's ``metric`` object, found by its ``type`` among the
    entry points of group ``warden.metrics``."""
    found = {ep.name: ep for ep in entry_points(group="warden.metrics")}
    kind = any_case(str(spec.get("type") or ""), found)
    if kind not in found:
        raise MetricError(f"unknown metric type {kind!r} (known: {', '.join(sorted(found))})")
    try:
        cls = found[kind].load()
    except Exception as error:  # noqa: BLE001 - a plugin that fails to import
        raise MetricError(f"metric type {kind!r} failed to load from {found[kind].value}: "
                          f"{type(error).__name__}: {error}") from None
    return cls(spec, context)


