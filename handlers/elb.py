"""The ELB handler: enrols this instance in the classic load balancers and ELBv2 target
groups of the services that have routes here, and deregisters it when the last goes.

AWS calls run on the handler's own thread, so a slow or failing AWS API never holds up
a route. The thread works level by level: it keeps what each target should be and what
AWS was last seen to hold, and retries with backoff until the two agree.
"""

from __future__ import annotations

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
from warden.model import Change, DesiredState, LoadBalancerTarget
from warden.runtime import aws
from warden.runtime.threads import Backoff, StoppableThread

logger = logging.getLogger(__name__)

#: short timeouts and botocore's standard retries (throttling, 5xx) for every call
AWS_CLIENT_CONFIG = botocore.config.Config(
    connect_timeout=3, read_timeout=5, retries={"mode": "standard", "max_attempts": 3})

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
        self._complained: set[LoadBalancerTarget] = set()
        #: True once this host drains: it leaves every target and joins none again
        self.draining = False
        self._drained_told = False
        #: the central Redis, where this host's enrolment count is kept for the other
        #: Warden process on the host (its lifecycle completer)
        self.central: Any = None
        #: (count, monotonic time) last written there
        self._recorded: tuple[int, float] = (-1, 0.0)

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

    def _change(self, target: LoadBalancerTarget, enrolled: bool) -> Change:
        return Change("+" if enrolled else "-", target.change_text(self.instance_id or "?"))

    def _made(self, change: Change) -> None:
        logger.info("%s", change, extra={"change": str(change)})
        signals.send(signals.change_made, self, change=change, service=None, container_id="")

    # -- hooks -----------------------------------------------------------------

    def start(self) -> None:
        self._worker.start()

    def threads(self) -> list[Any]:
        return [self._worker]

    def stop(self) -> None:
        # The daemon joins the worker under the process's stop deadline.
        self._worker.stop()

    def use_central(self, client: Any) -> None:
        self.central = client

    def record_enrolment(self, force: bool = False) -> None:
        """Keep ``warden:enrolment:<instanceId>``: the targets this host is in or is
        joining. Written when the count changes, renewed a third of its life before it
        would expire; a central Redis that does not answer is tried at the next call."""
        if self.central is None or not self.instance_id:
            return
        with self._lock:
            count = len({t for t, on in self.held.items() if on} | {t for t, on in self.wanted.items() if on})
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
        self._want({target: enrolled and not self.draining}, recheck=False)

    def on_host_draining(self, sender: Any, *, reason: str, **kw: Any) -> None:
        """Leave every load balancer and target group now; join none again."""
        with self._lock:
            self.draining = True
            targets = {t: False for t in self.wanted}
        self._want(targets, recheck=True)
        if not targets:
            self.tell_drained()

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
            self._want({t: on and not self.draining for t, on in desired.targets.items()},
                       recheck=True)
            self.record_enrolment()
            return []
        changes = []
        for target, enrolled in sorted(desired.targets.items()):
            if not self.instance_id:
                raise RuntimeError("instanceId is unknown: cannot check load-balancer enrolment")
            if self.is_enrolled(target) == enrolled:
                continue
            change = self._change(target, enrolled)
            changes.append(change)
            if apply:
                self.set_enrolled(target, enrolled)
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
        with self._lock:
            # Only record success for what was wanted when the call began; a change
            # that came in meanwhile stays pending.
            if self.wanted.get(target) == wanted:
                self.held[target] = wanted


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
                        handler.held.get(t) != on for t, on in handler.wanted.items()):
                    handler._lock.wait(1.0)
            if self.stopping:
                break
            failed: Optional[Exception] = None
            for target in handler.pending():
                if self.stopping:
                    break
                try:
                    handler.settle(target)
                except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
                        IndexError, KeyError) as error:
                    failed = error
                    logger.warning("load-balancer call for %s failed: %s", target.name, error)
                    signals.send(signals.aws_call_failed, handler,
                                 **aws.failure("elb" if target.kind == "elb" else "elbv2", error))
            handler.record_enrolment()
            if failed is None and handler.draining and not handler.pending():
                handler.tell_drained()
            if failed is None:
                self.backoff.reset()
            else:
                self.stop_event.wait(self.backoff.next_delay())
