"""Containers as targets of their service's ELBv2 target group (``targetMode:
"container"``), for the ELB handler: what each group should hold of this host, what AWS
was last seen to hold, and the calls that bring one to the other.

A group's target type is read once (DescribeTargetGroups): an ``instance`` group gets
``instanceId:hostPort`` (the host port published for the service's ``port``), an ``ip``
group the container's own ``ip:port``. Only this host's targets are ever removed: in an
``instance`` group those of this instance; in an ``ip`` group those this host
registered, as recorded in the central Redis set ``warden:targets:<instanceId>``
(``<groupArn> <ip>:<port>``) before each registration, since addresses of several hosts
may share a subnet. Every change of a group is one RegisterTargets and one
DeregisterTargets call, however many containers it concerns.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import botocore.exceptions
import redis

from warden.model import Change, ContainerTarget

logger = logging.getLogger("warden.handlers.elb")

#: ``warden:targets:<instanceId>``: the ip targets this host registered
TARGETS_PREFIX = "warden:targets:"
#: most targets one RegisterTargets or DeregisterTargets call is given
BATCH = 100
#: seconds a group's deregistered target may stay ``draining`` when its attributes
#: cannot be read (ELBv2's default deregistration delay)
DEFAULT_DELAY = 300.0

#: seconds past a group's deregistration delay after which a deregistered target is
#: forgotten without asking AWS
FORGET_AFTER = 60.0
#: the target group attribute that bounds how long a deregistered target drains
DELAY_KEY = "deregistration_delay.timeout_seconds"

#: an AWS target: (Id, Port)
Key = tuple[str, int]


@dataclass
class Group:
    """One target group this host's containers join."""

    arn: str
    #: ``instance`` or ``ip`` (``lambda`` and ``alb`` groups are refused); None: unread
    target_type: Optional[str] = None
    #: the group's ``deregistration_delay.timeout_seconds``
    delay: float = DEFAULT_DELAY
    #: why the group takes no target from Warden (absent, of a wrong type); "" when fine
    problem: str = ""
    #: the containers here that should be its targets
    wanted: set[ContainerTarget] = field(default_factory=set)
    #: this host's targets in it as AWS last said (None: read again before acting)
    held: Optional[set[Key]] = None
    #: targets deregistered and not yet seen out of ``draining``, with the monotonic
    #: time past which they cannot be draining any more (the delay after the call, and
    #: a minute: a drain's own deadline comes first and says what still drains)
    leaving: dict[Key, float] = field(default_factory=dict)

    def prune(self, now: float) -> None:
        """Forget what has left ``draining`` by now whatever AWS says."""
        self.leaving = {k: until for k, until in self.leaving.items() if until > now}
    #: True while what is wanted may differ from what is held
    dirty: bool = True


def change_text(arn: str, key: Key) -> str:
    """``targetgroup:<arn> <id>:<port>``, as host-mode enrolment prints it."""
    return f"targetgroup:{arn} {key[0]}:{key[1]}"


class Members:
    """The container targets of every ``targetMode: "container"`` group; the lock is
    the ELB handler's, so its worker wakes for either kind of work."""

    def __init__(self, instance_id: str, client: Callable[[str], Any], lock: threading.Condition,
                 central: Callable[[], Any]) -> None:
        self.instance_id = instance_id
        self.client = client
        self.lock = lock
        self.central = central
        self.groups: dict[str, Group] = {}
        #: ``<arn> <ip>:<port>`` of the ip targets this process registered
        self.recorded: set[str] = set()
        #: containers refused as targets (a port not published, a wrong group type)
        self.refused = 0
        self._said: set[tuple[str, str]] = set()
        #: True while this host is away (it drains, or rests at a rebalance
        #: recommendation): every group is left and none joined
        self.away = False
        #: target group -> its deregistration delay, read once
        self._delays: dict[str, float] = {}

    # -- what is wanted ----------------------------------------------------------------

    def _group(self, arn: str) -> Group:
        group = self.groups.get(arn)
        if group is None:
            group = self.groups[arn] = Group(arn)
        return group

    def want(self, target: ContainerTarget, registered: bool) -> None:
        """One container joins or leaves its group (the Registrar's event path)."""
        with self.lock:
            group = self._group(target.group)
            if registered and not self.away:
                group.wanted.add(target)
            else:
                group.wanted.discard(target)
            group.dirty = True
            self.lock.notify_all()

    def want_all(self, members: dict[str, frozenset[ContainerTarget]]) -> None:
        """A sweep: every group as ``members`` says (a group no service names any more
        is left), each read from AWS again before acting."""
        with self.lock:
            for arn in set(members) | set(self.groups):
                group = self._group(arn)
                group.wanted = set() if self.away else set(members.get(arn, ()))
                group.held = None
                group.dirty = True
                if group.problem:
                    group.target_type, group.problem = None, ""  # it may exist by now
            self.lock.notify_all()

    def leave_all(self, away: bool = True) -> None:
        """This host drains or rests: every group is left (``away=False``: it may join
        again, at the next :meth:`want_all`)."""
        with self.lock:
            self.away = away
            if not away:
                return
            for group in self.groups.values():
                group.wanted = set()
                group.dirty = True
            self.lock.notify_all()

    def pending(self) -> list[str]:
        with self.lock:
            return sorted(arn for arn, group in self.groups.items() if group.dirty)

    def count(self) -> int:
        """Targets this host holds or is joining, over every group."""
        now = time.monotonic()
        with self.lock:
            for group in self.groups.values():
                group.prune(now)
            return sum(max(len(g.held or ()), len(g.wanted)) + len(g.leaving) for g in self.groups.values())

    # -- reading AWS -------------------------------------------------------------------

    def read_group(self, group: Group) -> None:
        """The group's target type and deregistration delay, once; a group that does
        not exist, or of a type that takes no container, is refused."""
        elbv2 = self.client("elbv2")
        try:
            found = elbv2.describe_target_groups(TargetGroupArns=[group.arn])["TargetGroups"]
        except botocore.exceptions.ClientError as error:
            code = (error.response.get("Error") or {}).get("Code", "")
            if code in ("TargetGroupNotFound", "ValidationError"):
                self._refuse(group, f"target group {group.arn} does not exist ({code})")
                return
            raise
        kind = (found[0].get("TargetType") if found else None) or "instance"
        if kind not in ("instance", "ip"):
            self._refuse(group, f"target group {group.arn} takes {kind} targets; targetMode "
                                '"container" needs an instance or ip group')
            return
        group.delay = self.delay_of(group.arn)
        group.target_type = kind

    def _refuse(self, group: Group, why: str) -> None:
        """Refuse a group: said and counted once (a sweep reads it again, quietly)."""
        group.problem = why
        if (group.arn, why) not in self._said:
            self._said.add((group.arn, why))
            self.refused += 1
            logger.error("not registering containers: %s", why)

    def owned(self, group: Group, key: Key) -> bool:
        """Is ``key`` this host's, to deregister?"""
        if group.target_type == "instance":
            return key[0] == self.instance_id
        return f"{group.arn} {key[0]}:{key[1]}" in self.recorded

    def _recall(self) -> None:
        """The ip targets this host registered before (another run of this process)."""
        central = self.central()
        if central is None or not self.instance_id:
            return
        try:
            found = central.smembers(TARGETS_PREFIX + self.instance_id)
        except redis.RedisError as error:
            logger.debug("cannot read this host's ip targets: %s", error)
            return
        self.recorded |= {m.decode() if isinstance(m, bytes) else str(m) for m in found}

    def health(self, group: Group, every: bool = False) -> dict[Key, str]:
        """This host's targets in ``group`` (``every``: all its targets) and their
        state, from DescribeTargetHealth."""
        if group.target_type == "ip" and not every:
            self._recall()
        reply = self.client("elbv2").describe_target_health(TargetGroupArn=group.arn)
        states = {}
        for description in reply.get("TargetHealthDescriptions") or []:
            target = description.get("Target") or {}
            key = (str(target.get("Id", "")), int(target.get("Port") or 0))
            if every or self.owned(group, key):
                states[key] = (description.get("TargetHealth") or {}).get("State", "initial")
        return states

    # -- acting ------------------------------------------------------------------------

    def wanted_keys(self, group: Group, wanted: Iterable[ContainerTarget]) -> set[Key]:
        """The AWS targets of ``wanted`` in ``group``; a container that cannot be one is
        said once and counted."""
        keys = set()
        for target in wanted:
            key, why = target.aws_target(group.target_type or "instance", self.instance_id)
            if key is None:
                if (target.container_id, group.arn) not in self._said:
                    self._said.add((target.container_id, group.arn))
                    self.refused += 1
                    logger.error("container %s of service %s is not a target of %s: %s",
                                 target.container_id[:12], target.service, group.arn, why)
                continue
            keys.add(key)
        return keys

    def plan(self, arn: str) -> tuple[Group, set[ContainerTarget], list[Key], list[Key]]:
        """What one group needs: ``(group, wanted, register, deregister)``, reading AWS
        where the handler does not know."""
        with self.lock:
            group = self._group(arn)
            wanted = set(group.wanted)
        if group.target_type is None and not group.problem:
            self.read_group(group)
        if group.problem:
            return group, wanted, [], []
        keys = self.wanted_keys(group, wanted)
        held = group.held
        if held is None:
            states = self.health(group)
            held = {k for k, state in states.items() if state != "draining"}
            with self.lock:
                until = time.monotonic() + group.delay + FORGET_AFTER
                group.leaving.update({k: until for k, state in states.items() if state == "draining"})
        return group, wanted, sorted(keys - held), sorted(held - keys)

    def settle(self, arn: str, apply: bool = True) -> list[Change]:
        """Bring one group to what is wanted (raises botocore's errors); the changes."""
        group, wanted, register, deregister = self.plan(arn)
        changes = [Change("-", change_text(arn, k)) for k in deregister] + \
                  [Change("+", change_text(arn, k)) for k in register]
        if not apply:
            return changes
        elbv2 = self.client("elbv2")
        if deregister:
            for start in range(0, len(deregister), BATCH):
                elbv2.deregister_targets(TargetGroupArn=arn, Targets=[
                    {"Id": i, "Port": p} for i, p in deregister[start:start + BATCH]])
            self._forget(group, deregister)
        if register:
            self._record(group, register)
            for start in range(0, len(register), BATCH):
                elbv2.register_targets(TargetGroupArn=arn, Targets=[
                    {"Id": i, "Port": p} for i, p in register[start:start + BATCH]])
        with self.lock:
            until = time.monotonic() + group.delay + FORGET_AFTER
            group.leaving.update({k: until for k in deregister})
            for key in register:
                group.leaving.pop(key, None)
            group.held = self.wanted_keys(group, wanted) if not group.problem else set()
            # What came in meanwhile stays pending.
            if group.wanted == wanted:
                group.dirty = False
        return changes

    def _record(self, group: Group, keys: list[Key]) -> None:
        """Before registering ip targets: this host's, in the central Redis."""
        if group.target_type != "ip":
            return
        entries = [f"{group.arn} {i}:{p}" for i, p in keys]
        self.recorded |= set(entries)
        central = self.central()
        if central is not None and self.instance_id:
            try:
                central.sadd(TARGETS_PREFIX + self.instance_id, *entries)
            except redis.RedisError as error:
                logger.warning("cannot record this host's ip targets in the central Redis (%s): a "
                               "restart will not remove them if their containers are gone by then", error)

    def _forget(self, group: Group, keys: list[Key]) -> None:
        if group.target_type != "ip":
            return
        entries = [f"{group.arn} {i}:{p}" for i, p in keys]
        self.recorded -= set(entries)
        central = self.central()
        if central is not None and self.instance_id:
            try:
                central.srem(TARGETS_PREFIX + self.instance_id, *entries)
            except redis.RedisError as error:
                logger.debug("cannot update this host's ip targets: %s", error)

    # -- leaving -----------------------------------------------------------------------

    def still_draining(self) -> dict[str, set[Key]]:
        """The deregistered targets AWS still reports ``draining``, by group."""
        found = {}
        for arn, group in list(self.groups.items()):
            if not group.leaving or group.problem:
                continue
            # What this host deregistered, which it no longer records as its own.
            states = self.health(group, every=True)
            with self.lock:
                group.leaving = {k: until for k, until in group.leaving.items() if states.get(k) == "draining"}
                draining = set(group.leaving)
            if draining:
                found[arn] = draining
        return found

    def delay_of(self, arn: str) -> float:
        """The deregistration delay of any target group (a host-mode one too), read once."""
        group = self.groups.get(arn)
        if group is not None and group.target_type is not None:
            return group.delay
        if arn not in self._delays:
            self._delays[arn] = DEFAULT_DELAY
            try:
                attributes = self.client("elbv2").describe_target_group_attributes(TargetGroupArn=arn)["Attributes"]
                value = next((a["Value"] for a in attributes if a["Key"] == DELAY_KEY), None)
                if value is not None:
                    self._delays[arn] = float(value)
            except (botocore.exceptions.ClientError, ValueError) as error:
                logger.warning("cannot read the deregistration delay of %s (%s): assuming %.0fs",
                               arn, error, DEFAULT_DELAY)
        return self._delays[arn]

    def longest_delay(self) -> float:
        return max((g.delay for g in self.groups.values() if g.leaving), default=0.0)

    def view(self) -> list[dict]:
        """Each group and this host's targets in it, for ``warden status``."""
        now = time.monotonic()
        with self.lock:
            for group in self.groups.values():
                group.prune(now)
            return [{"targetGroupArn": arn, "targetType": g.target_type, "problem": g.problem,
                     "targets": sorted(f"{i}:{p}" for i, p in (g.held or ())),
                     "draining": sorted(f"{i}:{p}" for i, p in g.leaving)}
                    for arn, g in sorted(self.groups.items())]
