"""From a metric to a task count: step tables, clamps, the scale-down window and the
largest step a pass may take.

- ``steps``: ``[[threshold, tasks], ...]``; the tasks of the highest threshold the
  metric reaches. Below the lowest threshold: ``minTasks``. With a metric but no steps,
  the metric itself, rounded up.
- ``minTasks`` (default 0) and ``maxTasks`` clamp first. ``maxTasks`` defaults to the
  highest step's count; without steps it must be given, so a garbage metric never asks
  for a million tasks.
- ``scaleDownDelaySeconds`` (default 300): scale down only to the highest count wanted
  in that window. The last sample before the window counts too, so passes further apart
  than the window never scale down at once.
- ``maxStep``: the most tasks started or stopped in one pass.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from warden import jsonfile
from warden.errors import MetricError


@dataclass(frozen=True)
class Policy:
    """A service's ``scaling`` object."""

    steps: tuple[tuple[float, int], ...] = ()
    steps_url: str = ""
    min_tasks: int = 0
    max_tasks: Optional[int] = None
    scale_down_delay: float = 300.0
    max_step: Optional[int] = None

    @classmethod
    def from_spec(cls, spec: Optional[Mapping[str, Any]]) -> "Policy":
        """Build from the (validated, lower-cased) ``scaling`` object."""
        spec = spec or {}
        return cls(
            steps=tuple((float(t), int(n)) for t, n in spec.get("steps") or ()),
            steps_url=str(spec.get("stepsurl") or ""),
            min_tasks=int(spec.get("mintasks") or 0),
            max_tasks=None if spec.get("maxtasks") is None else int(spec["maxtasks"]),
            scale_down_delay=float(300 if spec.get("scaledowndelayseconds") is None
                                   else spec["scaledowndelayseconds"]),
            max_step=None if spec.get("maxstep") is None else int(spec["maxstep"]),
        )

    def ceiling(self, steps: tuple[tuple[float, int], ...]) -> Optional[int]:
        """The most tasks this policy ever asks for: ``maxTasks``, else the highest
        step's count (or ``minTasks``, if higher); None when there is neither (no count
        can be trusted then)."""
        if self.max_tasks is not None:
            return self.max_tasks
        if not steps:
            return None
        return max(self.min_tasks, *(n for _, n in steps))

    def wanted(self, value: float, steps: tuple[tuple[float, int], ...]) -> int:
        """The clamped count for ``value``; :class:`MetricError` when neither steps nor
        ``maxTasks`` bound it."""
        ceiling = self.ceiling(steps)
        if ceiling is None:
            raise MetricError("no steps and no maxTasks: refusing an unbounded count")
        if steps:
            reached = [n for threshold, n in sorted(steps) if value >= threshold]
            count = reached[-1] if reached else self.min_tasks
        else:
            count = max(0, math.ceil(value))
        return min(max(count, self.min_tasks), ceiling)


class Window:
    """Counts wanted over time, for the scale-down delay."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, when: float, count: int) -> None:
        """Record what was wanted at ``when``."""
        self.samples.append((when, count))

    def highest(self, now: float, delay: float) -> int:
        """The highest count in ``[now - delay, now]``, the last sample before it
        included; older ones are forgotten."""
        start = now - delay
        while len(self.samples) > 1 and self.samples[1][0] <= start:
            self.samples.popleft()
        return max((n for _, n in self.samples), default=0)

    def __len__(self) -> int:
        return len(self.samples)


def desired(policy: Policy, wanted: int, running: int, window: Window, now: float) -> int:
    """The count to move towards this pass: up at once, down only as far as the window
    allows, and at most ``maxStep`` away from ``running``."""
    window.add(now, wanted)
    target = wanted
    if wanted < running:
        target = max(wanted, min(running, window.highest(now, policy.scale_down_delay)))
    if policy.max_step is not None and abs(target - running) > policy.max_step:
        target = running + policy.max_step * (1 if target > running else -1)
    return target


#: the most tasks a step, ``minTasks``, ``maxTasks`` or ``maxStep`` may name: a typo of
#: a few extra digits must not reach RunTask
MAX_TASKS = 10000
#: what a steps array must be, for problem lines
STEPS_RULE = f"must be a list of [threshold, tasks] pairs (a finite threshold, tasks from 0 to {MAX_TASKS})"


def is_task_count(value: Any) -> bool:
    """A whole number of tasks from 0 to :data:`MAX_TASKS`."""
    return jsonfile.is_int(value) and 0 <= value <= MAX_TASKS


def valid_steps(data: Any) -> bool:
    """``[[threshold, tasks], ...]`` with finite thresholds and task counts in range."""
    return isinstance(data, list) and all(
        isinstance(s, list) and len(s) == 2 and jsonfile.is_number(s[0]) and is_task_count(s[1])
        for s in data)


def parse_steps(data: Any, where: str) -> tuple[tuple[float, int], ...]:
    """A steps array, or :class:`MetricError` naming ``where``."""
    if not valid_steps(data):
        raise MetricError(f"{where} {STEPS_RULE}")
    return tuple((float(t), int(n)) for t, n in data)


class StepsSource:
    """Steps held in a file or at ``s3://bucket/key``, read again when they change
    (the file's modification time, the object's ETag)."""

    def __init__(self, s3_client: Callable[[], Any], base_folder: str) -> None:
        self.s3 = s3_client
        self.base = base_folder
        self._cache: dict[str, tuple[Any, tuple[tuple[float, int], ...]]] = {}
        self._lock = threading.Lock()

    def steps(self, url: str) -> tuple[tuple[float, int], ...]:
        """The steps at ``url``; an unreadable source raises :class:`MetricError`."""
        if url.startswith("s3://"):
            bucket, _, key = url[5:].partition("/")
            try:
                head = self.s3().head_object(Bucket=bucket, Key=key)
                version = head.get("ETag")
                with self._lock:
                    cached = self._cache.get(url)
                if cached and cached[0] == version:
                    return cached[1]
                body = self.s3().get_object(Bucket=bucket, Key=key)["Body"].read()
            except Exception as error:  # noqa: BLE001 - any S3 failure is unreadable steps
                raise MetricError(f"steps at {url}: {error}") from None
            try:
                import json

                steps = parse_steps(json.loads(body), url)
            except ValueError:
                raise MetricError(f"steps at {url} are not JSON") from None
        else:
            path = url if os.path.isabs(url) else os.path.join(self.base, url)
            try:
                version = os.stat(path).st_mtime_ns
            except OSError as error:
                raise MetricError(f"steps file {url}: {error.strerror}") from None
            with self._lock:
                cached = self._cache.get(url)
            if cached and cached[0] == version:
                return cached[1]
            try:
                steps = parse_steps(jsonfile.load(path), url)
            except jsonfile.JsonFileError as error:
                raise MetricError(f"steps file {url}: {error}") from None
        with self._lock:
            self._cache[url] = (version, steps)
        return steps
