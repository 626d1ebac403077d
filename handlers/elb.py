"""The ELB handler: enrols this instance in the classic load balancers and ELBv2 target
groups of the services that have routes here, and deregisters it when the last goes.

AWS calls run on the handler's own thread, so a slow or failing AWS API never holds up
a route. The thread works level by level: it keeps what each target should be and what
AWS was last seen to hold, and retries with backoff until the two agree.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable, Optional

import botocore.config
import botocore.exceptions
import redis

from warden import signals

from warden.config import Config
from warden.handlers import Handler
from warden.manager.drain import ENROLMENT_PREFIX
from warden.handlers.members import Members
from warden.model import Change, ContainerTarget, DesiredState, LoadBalancerTarget
from warden.runtime import aws
from warden.runtime.threads import Backoff, StoppableThread

logger = logging.getLogger(__name__)

#: short timeouts and botocore's standard retries (throttling, 5xx) for every call
AWS_CLIENT_CONFIG = botocore.config.Config(
    connect_timeout=3, read_timeout=5, retries={"mode": "standard", "max_attempts": 3})

#: ``warden:enrolled:<instanceId>``: the load balancers and target groups this host's
#: Warden enrolled it in, each as JSON ``[kind, name, port]`` (a set in the central
#: Redis, renewed at each sweep): a sweep after a restart leaves those no service in
#: force names, as it would have while running
ENROLLED_PREFIX = "warden:enrolled:"
#: seconds the record lives without a sweep renewing it (a host gone for good)
ENROLLED_SECONDS = 7 * 86400


def target_text(target: LoadBalancerTarget) -> str:
    """A target as Warden's record holds it."""
    return json.dumps([target.kind, target.name, target.port])


def target_of(text: str) -> Optional[LoadBalancerTarget]:
    """A record entry back as a target; None for one that is not Warden's form."""
    try:
        kind, name, port = json.loads(text)
        return LoadBalancerTarget(str(kind), str(name), int(port)) if kind in ("elb", "targetgroup") else None
    except (ValueError, TypeError):
        return None


#: target health states that still count as enrolled
_ENROLLED_STATES = frozenset({"initial", "healthy", "unhealthy", "unused", "unavailable"})


def is_enrolled(client: Callable[[str], Any], instance_id: str, target: LoadBalancerTarget) -> bool:
    """Is ``instance_id`` in ``target`` now, as AWS says? ``client(name)`` gives the
    ``elb`` or ``elbv2`` client. A read only: ``warden status`` asks it too."""
    if target.kind == "elb":
        reply = client("elb").describe_load_balancers(LoadBalancerNames=[target.name])
        instances = reply["LoadBalancerDescriptions"][0].get("Instances") or []
        return any(i.get("InstanceId") == instance_id for i in instances)
    reply = client("elbv2").describe_target_health(TargetGroupArn=target.name)
    return any(
        d["Target"]["Id"] == instance_id and d["Target"].get("Port", target.port) == target.port
        and (d.get("TargetHealth") or {}).get("State", "initial") in _ENROLLED_STATES
        for d in reply.get("TargetHealthDescriptions") or [])


class ElbHandler(Handler):
    """Keeps this instance's load-balancer enrolment in step with its routes."""

    name = "elb"
    roles = frozenset({"registrar"})

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.instance_id = config.instance_id
        self._clients: dict[str, Any] = {}
        self._lock = threading.Condition()
        #: target -> should this instance be enrolled
        self.wanted: dict[LoadBalancerTarget, bool] = {}
        #: target -> enrolled as AWS last said (absent: read it again)
        self.held: dict[LoadBalancerTarget, bool] = {}
        self._worker = _EnrolmentWorker(self)
        self.workers = (self._worker,)
        self._complained: set[LoadBalancerTarget] = set()
        #: True once this host drains: it leaves every target and joins none again
        self.draining = False
        #: True while it rests at a rebalance recommendation: it leaves every target
        #: and joins them again when the rest is over
        self.resting = False
        self._drained_told = False
        #: the central Redis, where this host's enrolment count is kept for the other
        #: Warden process on the host (its lifecycle completer)
        self.central: Any = None
        #: (count, monotonic time) last written there
        self._recorded: tuple[int, float] = (-1, 0.0)
        #: containers as targets of their own (``targetMode: "container"``)
        self.members = Members(config.instance_id or "", self.client, self._lock, lambda: self.central)
        #: a draining host's host-mode target groups it left, until they stop draining
        self.host_leaving: set[LoadBalancerTarget] = set()
        #: when a draining host stops waiting for its targets to leave ``draining``
        #: (monotonic), once it left them all
        self.leave_deadline: Optional[float] = None
        self._leave_started = self._classic_until = 0.0
        self._waiting_said = False

    # -- AWS -----------------------------------------------------------------

    def client(self, service: str) -> Any:
        """A boto3 client (``elb`` or ``elbv2``), made on first use."""
        if service not in self._clients:
            self._clients[service] = aws.client(service, self.config.region,
                                                  AWS_CLIENT_CONFIG)
        return self._clients[service]

    def is_enrolled(self, target: LoadBalancerTarget) -> bool:
        """Ask AWS whether this instance is in ``target`` now."""
        return is_enrolled(self.client, self.instance_id or "", target)

    def set_enrolled(self, target: LoadBalancerTarget, enrolled: bool) -> None:
        """Register or deregister this instance."""
        if target.kind == "elb":
            call = ("register_instances_with_load_balancer" if enrolled
                    else "deregister_instances_from_load_balancer")
            getattr(self.client("elb"), call)(LoadBalancerName=target.name,
                                               Instances=[{"InstanceId": self.instance_id}])
        else:
            call = "register_targets" if enrolled else "deregister_targets"
            getattr(self.client("elbv2"), call)(
                TargetGroupArn=target.name, Targets=[{"Id": self.instance_id, "Port": target.port}])

    def note(self, target: LoadBalancerTarget, enrolled: bool) -> None:
        """Keep Warden's record of where it enrolled this host (the central Redis, when
        this process has one; it is renewed at each sweep, so a miss is made up)."""
        if self.central is None or not self.instance_id:
            return
        key = ENROLLED_PREFIX + self.instance_id
        try:
            if enrolled:
                self.central.sadd(key, target_text(target))
                self.central.pexpire(key, ENROLLED_SECONDS * 1000)
            else:
                self.central.srem(key, target_text(target))
        except redis.RedisError as error:
            logger.debug("cannot keep the record of this host's enrolment: %s", error)

    def strays(self, desired: DesiredState) -> dict[LoadBalancerTarget, bool]:
        """What Warden's record says it enrolled this host in and no service in force
        names any more (retired while Warden ran, or while it was down): to leave."""
        if self.central is None or not self.instance_id:
            return {}
        try:
            recorded = self.central.smembers(ENROLLED_PREFIX + self.instance_id)
            self.central.pexpire(ENROLLED_PREFIX + self.instance_id, ENROLLED_SECONDS * 1000)
        except redis.RedisError as error:
            logger.debug("cannot read the record of this host's enrolment: %s", error)
            return {}
        found = (target_of(t.decode() if isinstance(t, bytes) else t) for t in recorded)
        return {t: False for t in found if t is not None and t not in desired.targets}

    def _change(self, target: LoadBalancerTarget, enrolled: bool) -> Change:
        return Change("+" if enrolled else "-", target.change_text(self.instance_id or "?"))

    def _made(self, change: Change) -> None:
        logger.info("%s", change, extra={"change": str(change)})
        signals.send(signals.change_made, self, change=change, service=None, container_id="")

    # -- hooks -----------------------------------------------------------------

    def use_central(self, client: Any) -> None:
        self.central = client

    def register(self, telemetry: Any) -> None:
        telemetry.counter_source("warden_target_refusals",
                                 'Containers and target groups refused for targetMode "container" '
                                 "(a port not published, a group absent or of a wrong type)",
                                 lambda: self.members.refused)
        telemetry.gauge_source("warden_container_targets",
                               'Targets this host holds or is joining in targetMode "container" groups',
                               lambda: float(self.members.count()))

    def record_enrolment(self, force: bool = False) -> None:
        """Keep ``warden:enrolment:<instanceId>``: the targets this host is in or is
        joining. Written when the count changes, renewed a third of its life before it
        would expire; a central Redis that does not answer is tried at the next call."""
        if self.central is None or not self.instance_id:
            return
        with self._lock:
            count = len({t for t, on in self.held.items() if on} | {t for t, on in self.wanted.items() if on}
                        | self.host_leaving)
        count += self.members.count()
        life = max(60, int(3 * self.config.registrar_sleep_time_seconds))
        last, at = self._recorded
        if not force and count == last and time.monotonic() - at < life / 3:
            return
        try:
            self.central.set(ENROLMENT_PREFIX + self.instance_id, count, ex=life)
        except redis.RedisError as error:
            logger.debug("cannot record this host's enrolment: %s", error)
            return
        self._recorded = (count, time.monotonic())

    def _want(self, targets: dict[LoadBalancerTarget, bool], recheck: bool) -> None:
        with self._lock:
            for target, enrolled in targets.items():
                self.wanted[target] = enrolled
                if recheck:
                    self.held.pop(target, None)
            self._lock.notify_all()

    def on_enrolment_changed(self, sender: Any, *, target: LoadBalancerTarget,
                             enrolled: bool, **kw: Any) -> None:
        self._want({target: enrolled and not self.away}, recheck=False)

    @property
    def away(self) -> bool:
        """Draining or resting: in no load balancer."""
        return self.draining or self.resting

    def on_host_resting(self, sender: Any, *, reason: str, seconds: float, **kw: Any) -> None:
        """A rebalance recommendation: leave every load balancer and target group for a
        while (:meth:`on_host_rejoining` ends it); routes and leadership stay."""
        with self._lock:
            self.resting = True
            targets = {t: False for t in self.wanted}
        self.members.leave_all()
        self._want(targets, recheck=True)

    def on_host_rejoining(self, sender: Any, *, reason: str, **kw: Any) -> None:
        """The rest is over: join again what the routes here call for (a sweep asks)."""
        with self._lock:
            if self.draining or not self.resting:
                return
            self.resting = False
        self.members.leave_all(away=False)
        signals.send(signals.sweep_requested, self, reason=reason)

    def on_container_target_changed(self, sender: Any, *, target: ContainerTarget, registered: bool,
                                    **kw: Any) -> None:
        self.members.want(target, registered)

    def on_host_draining(self, sender: Any, *, reason: str, **kw: Any) -> None:
        """Leave every load balancer and target group now; join none again."""
        with self._lock:
            self.draining = True
            targets = {t: False for t in self.wanted}
        self.members.leave_all()
        self._want(targets, recheck=True)

    def tell_drained(self) -> None:
        """Say, once, that this draining host is enrolled nowhere any more."""
        if not self._drained_told:
            self._drained_told = True
            logger.info("drained: enrolled in no load balancer or target group")
            self.record_enrolment(force=True)
            signals.send(signals.enrolment_drained, self)

    def on_services_changed(self, sender: Any, *, retired: DesiredState, **kw: Any) -> None:
        if retired.targets:
            self._want(dict(retired.targets), recheck=True)

    def on_sweep(self, sender: Any, *, desired: DesiredState, apply: bool = True,
                 wait: bool = True, **kw: Any) -> list[Change]:
        if not wait:
            # The daemon's sweep: read AWS again on the handler's own thread.
            self.members.want_all(dict(desired.members))
            self._want({**self.strays(desired), **{t: on and not self.away for t, on in desired.targets.items()}},
                       recheck=True)
            self.record_enrolment()
            return []
        changes = []
        if desired.members:
            self.members.want_all(dict(desired.members))
            for arn in self.members.pending():
                for change in self.members.settle(arn, apply=apply):
                    changes.append(change)
                    if apply:
                        self._made(change)
        for target, enrolled in sorted({**self.strays(desired), **desired.targets}.items()):
            if not self.instance_id:
                raise RuntimeError("instanceId is unknown: cannot check load-balancer enrolment")
            if self.is_enrolled(target) == enrolled:
                continue
            change = self._change(target, enrolled)
            changes.append(change)
            if apply:
                self.set_enrolled(target, enrolled)
                self.note(target, enrolled)
                self._made(change)
        return changes

    # -- the worker's step ---------------------------------------------------------

    def pending(self) -> list[LoadBalancerTarget]:
        """Targets whose enrolment is not yet known to match what is wanted."""
        with self._lock:
            return sorted(t for t, on in self.wanted.items() if self.held.get(t) != on)

    def settle(self, target: LoadBalancerTarget) -> None:
        """Bring one target to what is wanted (raises on AWS errors)."""
        if not self.instance_id:
            if target not in self._complained:
                self._complained.add(target)
                logger.error("cannot enrol in %s: this host's instanceId is unknown "
                             "(set instanceId or WARDEN_INSTANCE_ID)", target.name)
            with self._lock:
                self.held[target] = self.wanted[target]
            return
        with self._lock:
            wanted = self.wanted[target]
            known = self.held.get(target)
        if known is None:
            known = self.is_enrolled(target)
        if known != wanted:
            self.set_enrolled(target, wanted)
            self._made(self._change(target, wanted))
            if not wanted and self.draining and target.kind == "targetgroup":
                with self._lock:
                    self.host_leaving.add(target)
        self.note(target, wanted)
        with self._lock:
            # Only record success for what was wanted when the call began; a change
            # that came in meanwhile stays pending.
            if self.wanted.get(target) == wanted:
                self.held[target] = wanted


    #: seconds between looks at the targets a draining host left
    drain_poll_seconds = 2.0
    #: seconds past the longest deregistration delay a draining host still waits
    drain_margin_seconds = 5.0

    def left(self) -> bool:
        """A draining host that deregistered everywhere: have the load balancers let go
        of it? ELBv2 targets once no longer ``draining`` (DescribeTargetHealth); classic
        ELBs after their connection-draining timeout; at most the longest delay (and a
        margin) after the last deregistration."""
        now = time.monotonic()
        if self.leave_deadline is None:
            classic = self._classic_draining()
            self._leave_started, self._classic_until = now, now + classic
            self.leave_deadline = now + max(classic, self._longest_delay()) + self.drain_margin_seconds
        draining = self.members.still_draining()
        for target in sorted(self.host_leaving):
            if self._host_draining(target):
                draining.setdefault(target.name, set()).add((self.instance_id or "", target.port))
            else:
                with self._lock:
                    self.host_leaving.discard(target)
        waiting = sum(len(keys) for keys in draining.values())
        if not waiting and now >= self._classic_until:
            return True
        if now >= self.leave_deadline:
            logger.warning("drain: %d target(s) still draining after %.0fs (the deregistration delay); "
                           "going on", waiting, now - self._leave_started)
            return True
        if not self._waiting_said:
            self._waiting_said = True
            logger.info("drain: waiting for %d target(s) to leave draining (up to %.0fs)",
                        waiting, self.leave_deadline - now)
        return False

    def _longest_delay(self) -> float:
        """The longest deregistration delay of the ELBv2 groups this host left."""
        return max([self.members.longest_delay()] + [self.members.delay_of(t.name) for t in self.host_leaving])

    def _classic_draining(self) -> float:
        """The longest connection-draining timeout of the classic ELBs this host left."""
        longest = 0.0
        for target in [t for t in self.wanted if t.kind == "elb"]:
            try:
                attributes = self.client("elb").describe_load_balancer_attributes(
                    LoadBalancerName=target.name)["LoadBalancerAttributes"]
            except botocore.exceptions.ClientError as error:
                logger.debug("cannot read the attributes of %s: %s", target.name, error)
                continue
            draining = attributes.get("ConnectionDraining") or {}
            if draining.get("Enabled"):
                longest = max(longest, float(draining.get("Timeout") or 0))
        return longest

    def _host_draining(self, target: LoadBalancerTarget) -> bool:
        reply = self.client("elbv2").describe_target_health(TargetGroupArn=target.name)
        return any(d["Target"]["Id"] == self.instance_id and d["Target"].get("Port", target.port) == target.port
                   and (d.get("TargetHealth") or {}).get("State") == "draining"
                   for d in reply.get("TargetHealthDescriptions") or [])


class _EnrolmentWorker(StoppableThread):
    """Settles pending targets one by one; failures back off and retry."""

    #: first delay after a failed round, in seconds
    backoff_initial = 1.0
    #: the delay never grows past this many seconds
    backoff_cap = 60.0

    def __init__(self, handler: ElbHandler) -> None:
        super().__init__("warden-elb")
        self.handler = handler
        self.backoff = Backoff(self.backoff_initial, self.backoff_cap)

    def on_stop(self) -> None:
        with self.handler._lock:
            self.handler._lock.notify_all()

    def run(self) -> None:
        handler = self.handler
        while not self.stopping:
            with handler._lock:
                while not self.stopping and not any(
                        handler.held.get(t) != on for t, on in handler.wanted.items()) and not any(
                        g.dirty for g in handler.members.groups.values()) and not (
                        handler.draining and not handler._drained_told):
                    handler._lock.wait(1.0)
            if self.stopping:
                break
            failed: Optional[Exception] = None
            for arn in handler.members.pending():
                if self.stopping:
                    break
                try:
                    for change in handler.members.settle(arn):
                        handler._made(change)
                except Exception as error:  # noqa: BLE001 - botocore's, and one it cannot parse: retry
                    failed = error
                    logger.warning("target group call for %s failed: %s", arn, error)
                    signals.send(signals.aws_call_failed, handler, **aws.failure("elbv2", error))
            for target in handler.pending():
                if self.stopping:
                    break
                try:
                    handler.settle(target)
                except Exception as error:  # noqa: BLE001 - botocore's, and one it cannot parse: retry
                    failed = error
                    logger.warning("load-balancer call for %s failed: %s", target.name, error)
                    signals.send(signals.aws_call_failed, handler,
                                 **aws.failure("elb" if target.kind == "elb" else "elbv2", error))
            handler.record_enrolment()
            if failed is None and handler.draining and not handler.pending() and not handler.members.pending():
                try:
                    if handler.left():
                        handler.tell_drained()
                    else:
                        self.stop_event.wait(handler.drain_poll_seconds)
                except Exception as error:  # noqa: BLE001 - botocore's, and one it cannot parse: retry
                    failed = error
                    logger.warning("cannot read whether this host's targets still drain: %s", error)
            if failed is None:
                self.backoff.reset()
            else:
                self.stop_event.wait(self.backoff.next_delay())
