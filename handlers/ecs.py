"""The ECS handler (leader only): brings each service's task count to what its metric
asks for.

It counts the tasks of the service's family whose desired status is RUNNING, that
Warden started (``startedBy`` ``warden``) and that carry the tag ``warden:service`` =
the service's name; starts the shortfall with ``run_task`` (at most 10 a call, a
``clientToken``, tags ``warden:service`` and ``warden:epoch``); and stops surplus tasks
newest first. Right before every mutating call it passes the Manager's fencing check: a
deposed leader changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import botocore.config
import botocore.exceptions

from warden import signals

from warden.config import Config
from warden.handlers import Handler
from warden.policy import Policy, Window, desired
from warden.runtime import aws
from warden.runtime.logs import Repeats
from warden.services import Service

logger = logging.getLogger(__name__)

#: reads (ListTasks, DescribeTasks): throttling and 5xx are botocore's standard retry
#: mode's to handle
AWS_CLIENT_CONFIG = botocore.config.Config(connect_timeout=3, read_timeout=10,
                                           retries={"mode": "standard", "max_attempts": 5})
#: mutating calls (RunTask, StopTask): a short timeout and no hidden retries, so a call
#: that passed the fence reaches ECS within seconds or not at all; Warden retries once
#: itself, fencing again first
MUTATING_CLIENT_CONFIG = botocore.config.Config(connect_timeout=2, read_timeout=3,
                                                retries={"mode": "standard", "total_max_attempts": 1})
#: attempts of one mutating call, each fenced
MUTATING_ATTEMPTS = 2
#: errors worth the one retry of a mutating call
_RETRYABLE_CODES = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException",
                              "RequestLimitExceeded", "ServiceUnavailable", "ServerException",
                              "InternalFailure", "InternalError"})
STARTED_BY = "warden"
RUN_TASK_BATCH = 10
DESCRIBE_BATCH = 100
#: RunTask options a service's ``runTask`` object may pass through (lower-case -> API)
@dataclass(frozen=True)
class ScalingResult:
    """What one pass found and did."""

    service: str
    metric: float
    desired: int
    running: int
    started: int
    stopped: int
    refused: bool = False


def warden_tasks(client: Any, cluster: str, service: Service) -> list[dict]:
    """The service's tasks in ``cluster``: its family, desired RUNNING, started by
    Warden, tagged with its name. (ListTasks allows ``startedBy`` only alone, so it is
    checked from DescribeTasks.) A read only: ``warden status`` asks it too."""
    arns: list[str] = []
    paginator = client.get_paginator("list_tasks")
    for page in paginator.paginate(cluster=cluster, family=service.task_name, desiredStatus="RUNNING"):
        arns.extend(page.get("taskArns") or [])
    found = []
    for start in range(0, len(arns), DESCRIBE_BATCH):
        reply = client.describe_tasks(cluster=cluster, tasks=arns[start:start + DESCRIBE_BATCH],
                                      include=["TAGS"])
        for task in reply.get("tasks") or []:
            tags = {t.get("key"): t.get("value") for t in task.get("tags") or []}
            if (task.get("startedBy") == STARTED_BY and tags.get("warden:service") == service.name
                    and task.get("desiredStatus", "RUNNING") == "RUNNING"):
                found.append(task)
    return found


class EcsHandler(Handler):
    """Counts, starts and stops a service's ECS tasks."""

    name = "ecs"
    roles = frozenset({"manager"})

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._client: Any = None
        self._mutating: Any = None
        self._windows: dict[str, Window] = {}
        self._passes = 0
        #: a service whose ECS calls keep failing is logged once, then once a minute
        self.repeats = Repeats(logger)
        self._lock = threading.Lock()

    def client(self) -> Any:
        """The boto3 ECS client, made on first use."""
        if self._client is None:
            self._client = aws.client("ecs", self.config.region,
                                        AWS_CLIENT_CONFIG)
        return self._client

    def mutating_client(self) -> Any:
        """The ECS client for RunTask and StopTask (short timeouts, no retries)."""
        if self._mutating is None:
            self._mutating = aws.client("ecs", self.config.region, MUTATING_CLIENT_CONFIG)
        return self._mutating

    def _fenced(self, fence: Callable[[], bool], operation: str, **params: Any) -> Optional[dict]:
        """One mutating call, fenced right before each of its (at most two) attempts:
        the reply, or None when the fence refused."""
        for attempt in range(1, MUTATING_ATTEMPTS + 1):
            if not fence():
                return None
            try:
                return getattr(self.mutating_client(), operation)(**params)
            except aws.ERRORS as error:
                if attempt == MUTATING_ATTEMPTS or not _retryable(error):
                    raise
                logger.info("%s failed (%s); once more, fenced again", operation, error)
        return None

    def on_leadership_gained(self, sender: Any, **kw: Any) -> None:
        # A new leader seeds each window with the running count at its first pass.
        with self._lock:
            self._windows.clear()

    # -- counting --------------------------------------------------------------------

    def tasks(self, service: Service) -> list[dict]:
        """The service's tasks (see :func:`warden_tasks`)."""
        return warden_tasks(self.client(), service.cluster or self.config.ecs_cluster, service)

    # -- acting ----------------------------------------------------------------------

    def _client_token(self, service: Service, epoch: int, batch: int) -> str:
        seed = f"{service.name}/{epoch}/{self._passes}/{batch}"
        return hashlib.sha256(seed.encode()).hexdigest()[:64]

    def start_tasks(self, service: Service, count: int, epoch: int, fence: Callable[[], bool]) -> tuple[int, bool]:
        """Start ``count`` tasks in calls of at most 10. Returns (started, refused)."""
        cluster = service.cluster or self.config.ecs_cluster
        definition = f"{service.task_name}:{service.task_version}" if service.task_version else service.task_name
        extra = dict(service.run_task.parameters) if service.run_task else {}
        started, batch = 0, 0
        while started < count:
            size = min(RUN_TASK_BATCH, count - started)
            # The same clientToken on the retry: ECS starts the batch once.
            reply = self._fenced(
                fence, "run_task", cluster=cluster, taskDefinition=definition, count=size,
                startedBy=STARTED_BY, clientToken=self._client_token(service, epoch, batch),
                tags=[{"key": "warden:service", "value": service.name},
                      {"key": "warden:epoch", "value": str(epoch)}], **extra)
            if reply is None:
                return started, True
            batch += 1
            placed = len(reply.get("tasks") or [])
            started += placed
            for failure in reply.get("failures") or []:
                logger.warning("run_task for %s: %s %s", service.name,
                               failure.get("reason"), failure.get("detail") or "")
            if placed < size:
                break  # ECS could not place them all: the next pass tries again
        return started, False

    def stop_tasks(self, service: Service, tasks: list[dict], count: int, desired_count: int,
                   epoch: int, fence: Callable[[], bool]) -> tuple[int, bool]:
        """Stop ``count`` tasks, newest first (``createdAt``, then task ARN); the reason
        ECS keeps names the epoch, as the tags of a started task do."""
        cluster = service.cluster or self.config.ecs_cluster
        newest = sorted(tasks, key=lambda t: (_created(t), t["taskArn"]), reverse=True)
        stopped = 0
        for task in newest[:count]:
            if self._fenced(fence, "stop_task", cluster=cluster, task=task["taskArn"],
                            reason=f"warden epoch {epoch}: scaling {service.name} to {desired_count}") is None:
                return stopped, True
            stopped += 1
        return stopped, False

    def on_scaling_pass(self, sender: Any, *, service: Service, metric: float,
                        steps: tuple, epoch: int, fence: Callable[[], bool],
                        **kw: Any) -> Optional[ScalingResult]:
        """One pass for ``service``: count, decide, act (fenced)."""
        policy = service.scaling or Policy()
        wanted = policy.wanted(metric, steps or policy.steps)
        try:
            tasks = self.tasks(service)
            running = len(tasks)
            # An interval: the monotonic clock, which an NTP step never moves.
            now = time.monotonic()
            with self._lock:
                self._passes += 1
                window = self._windows.get(service.name)
                if window is None:
                    window = self._windows[service.name] = Window()
                    window.add(now, running)
                target = desired(policy, wanted, running, window, now)
            started = stopped = 0
            refused = False
            if target > running:
                started, refused = self.start_tasks(service, target - running, epoch, fence)
            elif target < running:
                stopped, refused = self.stop_tasks(service, tasks, running - target, target, epoch, fence)
        except aws.ERRORS as error:
            self.repeats.failed(f"ecs:{service.name}", logging.WARNING, "scaling %s: ECS call failed: %s",
                                service.name, error, extra={"service": service.name})
            signals.send(signals.aws_call_failed, self, **aws.failure("ecs", error))
            signals.send(signals.scaling_failed, self, service=service.name, error=str(error))
            return None
        if refused:
            logger.warning("scaling %s: fencing refused epoch %s; changed nothing more",
                           service.name, epoch)
        self.repeats.ended(f"ecs:{service.name}", "scaling %s: ECS answers again", service.name,
                           extra={"service": service.name})
        result = ScalingResult(service.name, metric, target, running, started, stopped, refused)
        signals.send(signals.scaling_checked, self, service=service.name, desired=target,
                     running=running + started - stopped)
        if started or stopped:
            logger.info("scaled %s: metric %s, desired %d, running %d, started %d, stopped %d",
                        service.name, metric, target, running, started, stopped,
                        extra={"service": service.name, "epoch": epoch})
            signals.send(signals.scaled, self, service=service.name, metric=metric, desired=target,
                         running=running, started=started, stopped=stopped, epoch=epoch)
        return result


def _retryable(error: Exception) -> bool:
    """Throttling, a 5xx or a timeout: worth one more (fenced) attempt."""
    if isinstance(error, botocore.exceptions.ClientError):
        reply = error.response or {}
        code = (reply.get("Error") or {}).get("Code", "")
        status = (reply.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
        return code in _RETRYABLE_CODES or status >= 500
    return isinstance(error, (botocore.exceptions.ConnectionError,
                              botocore.exceptions.ReadTimeoutError))


def _created(task: dict) -> float:
    value = task.get("createdAt")
    if value is None:
        return 0.0
    return value.timestamp() if hasattr(value, "timestamp") else float(value)
