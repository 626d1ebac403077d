"""Draining this host: where a drain comes from, and the Auto Scaling lifecycle action
completed once it is done.

A drain is asked for by the leader (a spot warning or a terminate lifecycle action from
the AWS events queue names this host) through the key ``warden:drain:<instanceId>``
and a nudge on ``warden:drain``; or by this host's own instance metadata. Like a kill,
a drain takes effect only when the key backs it: the message only wakes the watcher,
and a lost message is recovered from the key at the next check. Every Warden process
on the host acts on it, so a host drains whether it runs ``warden run`` or
``warden registrar`` and ``warden manager`` as two processes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Optional

import botocore.config
import botocore.exceptions
import redis

from warden import signals

from warden.config import Config
from warden.runtime import aws
from warden.runtime.central import Central
from warden.runtime.threads import Backoff, StoppableThread
from warden.subscribers.aws_events import Refusals

# The name operators filter logs on, kept from before the module moved.
logger = logging.getLogger("warden.drain")

#: the detail type (and drain reason) of a spot interruption warning
SPOT_WARNING = "EC2 Spot Instance Interruption Warning"
#: ``warden:drain:<instanceId>``: JSON ``{"reason", "lifecycle"}``, set by the leader
DRAIN_PREFIX = "warden:drain:"
#: ``warden:draining:<instanceId>``: why the host drains, for ``warden status``
DRAINING_PREFIX = "warden:draining:"
#: ``warden:rebalance:<instanceId>``: JSON ``{"reason", "at"}``, set by the leader at a
#: spot rebalance recommendation for that host
REBALANCE_PREFIX = "warden:rebalance:"
#: how long a drain request and its record live, in seconds
DRAIN_SECONDS = 3600
#: ``warden:enrolment:<instanceId>``: how many load balancers and target groups the
#: process that runs the ``elb`` handler on that host holds it in (or is joining),
#: rewritten as that changes and renewed at each sweep, so that a process without
#: the handler knows at drain time whether someone must leave them first
ENROLMENT_PREFIX = "warden:enrolment:"

#: Warden retries CompleteLifecycleAction itself, with backoff, until it succeeds
_CLIENT_CONFIG = botocore.config.Config(connect_timeout=3, read_timeout=5,
                                        retries={"mode": "standard", "total_max_attempts": 1})


def request_drain(client: Any, instance_id: str, reason: str, lifecycle: Optional[dict]) -> None:
    """Ask ``instance_id`` to drain (the leader's side): the key first, since it is the
    truth; the caller then nudges on ``warden:drain``."""
    client.set(DRAIN_PREFIX + instance_id, json.dumps({"reason": reason, "lifecycle": lifecycle}),
               ex=DRAIN_SECONDS)


class DrainRelay:
    """The leader's part in a drain: a spot interruption warning or an Auto Scaling
    terminate action from the AWS events queue (which only the leader consumes) is
    passed on to the host it names, the drain key first (the truth), then a nudge on
    ``warden:drain``."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self.receivers = signals.Receivers((signals.aws_event, self._on_aws_event))
        self.refusals = Refusals(manager.redis)

    def start(self) -> None:
        self.receivers.connect()

    def stop(self) -> None:
        self.receivers.disconnect()

    def _on_aws_event(self, sender: Any, *, event: Any, **kw: Any) -> Optional[bool]:
        if event.kind not in ("spot-interruption", "terminate-lifecycle", "rebalance-recommendation") \
                or not event.instance_id:
            return None
        target = event.instance_id
        if event.kind == "rebalance-recommendation":
            return self._relay_rebalance(target, event)
        lifecycle = None
        if event.kind == "terminate-lifecycle":
            lifecycle = {k: event.detail.get(k) for k in
                         ("LifecycleHookName", "AutoScalingGroupName", "LifecycleActionToken")}
            confirmed = self._confirm_lifecycle(target, lifecycle, event)
            if confirmed is not True:
                return confirmed
        try:
            request_drain(self.manager.redis, target, event.detail_type, lifecycle)
        except redis.RedisError as error:
            # Not stored: the queue delivers the event again.
            logger.warning("cannot record the drain of %s (%s); the event stays queued", target, error)
            return False
        logger.warning("%s for %s: asking it to drain", event.detail_type, target)
        self.manager.publish("drain", self.manager.current_epoch(), instance_id=target)
        return True

    def _confirm_lifecycle(self, target: str, lifecycle: dict, event: Any) -> Optional[bool]:
        """Does Auto Scaling have this instance terminating? DescribeAutoScalingInstances
        shows an instance whose terminate action is under way in a ``Terminating``
        state (``Terminating:Wait`` while a hook holds it), in the group the event
        names. True: confirmed; None: refused (the message is deleted); False: the API
        did not answer (the message comes back)."""
        group = lifecycle.get("AutoScalingGroupName")
        try:
            found = aws.client("autoscaling", self.manager.config.region, _CLIENT_CONFIG).describe_auto_scaling_instances(
                InstanceIds=[target]).get("AutoScalingInstances") or []
        except aws.ERRORS as error:
            logger.warning("cannot confirm the terminate action of %s with Auto Scaling (%s); the event stays "
                           "queued", target, error)
            return False
        states = {i.get("AutoScalingGroupName"): str(i.get("LifecycleState") or "") for i in found}
        if group not in states or not states[group].startswith("Terminating"):
            said = f"in {group!r} it is {states[group]!r}" if group in states else f"it is in no group {group!r}"
            self.refusals.refuse(self, event, "not_confirmed",
                                 f"Auto Scaling does not have {target} terminating ({said})")
            return None
        return True

    def _relay_rebalance(self, target: str, event: Any) -> bool:
        """A rebalance recommendation: the host decides (its ``rebalanceDrain``) whether
        to leave its load balancers for a while; the key says which recommendation."""
        record = json.dumps({"reason": event.detail_type, "at": event.id or round(time.time(), 3)})
        try:
            self.manager.redis.set(REBALANCE_PREFIX + target, record, ex=DRAIN_SECONDS)
        except redis.RedisError as error:
            logger.warning("cannot record the rebalance recommendation for %s (%s); the event stays queued",
                           target, error)
            return False
        logger.info("%s for %s: telling it", event.detail_type, target)
        self.manager.publish("drain", self.manager.current_epoch(), instance_id=target)
        return True


class DrainWatcher(StoppableThread):
    """Checks this host's drain key when the control channels are subscribed (the first
    time, and after every reconnect, since a message may have been lost meanwhile), at
    once on a ``warden:drain`` message naming this host, and every
    ``managerSleepTimeSeconds`` as a safety net; emits ``host_draining`` once."""

    def __init__(self, config: Config, central: Central) -> None:
        super().__init__("warden-drain-watch")
        self.instance_id = config.instance_id or ""
        self.key = DRAIN_PREFIX + self.instance_id
        self.interval = config.manager_sleep_time_seconds
        self.unheard_interval = config.heartbeat_interval_seconds
        #: set while the control channels are subscribed: a drain message would be heard
        self.hearing = central.subscribed
        self.redis = central.commands
        self.display = central.display
        self.wake = threading.Event()
        #: True once the drain was acted on
        self.drained = False
        self.receivers = signals.Receivers((signals.control_received, self._on_control),
                                           (signals.control_subscription, self._on_subscription))
        self._reachable = True
        #: ``rebalanceDrain``: act on rebalance recommendations, for this many seconds
        self.rebalance_seconds = config.rebalance_drain_seconds if config.rebalance_drain else None
        self.rebalance_key = REBALANCE_PREFIX + self.instance_id
        #: the recommendation acted on last (the key's value), and when its rest ends
        self.rested_for: Optional[str] = None
        self.resting_until: Optional[float] = None
        #: on EC2 this host's own instance metadata is the witness of a spot notice: a
        #: relayed one is believed only once metadata shows it too
        self.on_ec2 = config.on_ec2
        self._unconfirmed_said = False

    def _on_control(self, sender: Any, *, message: Any, **kw: Any) -> None:
        if message.type == "drain" and message.instance_id == self.instance_id:
            logger.info("drain message for this host: checking %s", self.key)
            self.wake.set()

    def _on_subscription(self, sender: Any, *, held: bool, **kw: Any) -> None:
        self.wake.set()

    def on_stop(self) -> None:
        self.wake.set()

    def check(self) -> bool:
        """One look at the key; True when it asks this host to drain."""
        try:
            raw = self.redis.get(self.key)
            raw = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        except redis.RedisError as error:
            if self._reachable:
                logger.warning("cannot read %s from the central Redis %s (%s); trying again",
                               self.key, self.display, error)
            self._reachable = False
            return False
        self._reachable = True
        if raw is None:
            return False
        try:
            details = json.loads(raw)
        except ValueError:
            details = None
        if not isinstance(details, dict):
            details = {}
        lifecycle = details.get("lifecycle") if isinstance(details.get("lifecycle"), dict) else None
        reason = str(details.get("reason") or "drain requested")
        if self.on_ec2 and reason == SPOT_WARNING and not self._metadata_shows_spot_notice():
            if not self._unconfirmed_said:
                self._unconfirmed_said = True
                logger.warning("%s: a relayed spot interruption warning that this instance's metadata does not "
                               "show (spot/instance-action); not draining unless it does", self.key)
                signals.send(signals.aws_event_refused, self, reason="not_confirmed", detail_type=reason)
            return False
        self.drained = True
        logger.warning("%s: draining (%s)", self.key, reason)
        signals.send(signals.host_draining, self, reason=reason, lifecycle=lifecycle)
        return True

    @staticmethod
    def _metadata_shows_spot_notice() -> bool:
        from warden.runtime.metadata import fetch_metadata

        return bool((fetch_metadata(["spot/instance-action"]) or {}).get("spot/instance-action"))

    def check_rebalance(self) -> None:
        """A new rebalance recommendation for this host (with ``rebalanceDrain``): leave
        the load balancers for ``rebalanceDrainSeconds``; once they are over, join again."""
        if self.rebalance_seconds is None:
            return
        now = time.monotonic()
        if self.resting_until is not None and now >= self.resting_until:
            self.resting_until = None
            logger.warning("no interruption %.0fs after the rebalance recommendation: joining the "
                           "load balancers again", self.rebalance_seconds)
            signals.send(signals.host_rejoining, self, reason="rebalance recommendation over")
        try:
            raw = self.redis.get(self.rebalance_key)
        except redis.RedisError:
            return  # check() said so
        raw = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        if raw is None or raw == self.rested_for:
            return
        self.rested_for = raw
        self.resting_until = now + self.rebalance_seconds
        logger.warning("%s: leaving the load balancers for %.0fs (rebalanceDrain)", self.rebalance_key,
                       self.rebalance_seconds)
        signals.send(signals.host_resting, self, reason="EC2 Instance Rebalance Recommendation",
                     seconds=self.rebalance_seconds)

    def run(self) -> None:
        while not self.stopping and not self.check():
            self.check_rebalance()
            # Unsubscribed, a drain message cannot be heard: look every heartbeat period.
            wait = self.interval if self.hearing.is_set() else self.unheard_interval
            if self.resting_until is not None:
                wait = max(0.05, min(wait, self.resting_until - time.monotonic()))
            self.wake.wait(wait)
            self.wake.clear()


class LifecycleCompleter(StoppableThread):
    """Completes the Auto Scaling lifecycle action a drain carries, once this host is
    drained: after the ELB handler left every target, when this process runs it; else
    once the process that runs it on this host holds the host in no load balancer
    (``warden:enrolment:<instanceId>`` absent or 0), judged at drain time, so load
    balancers named by labels or by a file added after start count too. The call is
    retried, with its token, until it succeeds or the hook can no longer be waiting."""

    #: seconds after which the hook has timed out whatever its settings (the longest
    #: heartbeat timeout Auto Scaling allows)
    deadline_seconds = 7200.0
    #: first and longest wait between attempts, in seconds
    backoff_initial = 1.0
    backoff_cap = 30.0

    #: seconds between looks at what the enrolling process holds
    look_seconds = 0.5
    #: seconds between RecordLifecycleActionHeartbeat calls while the host still leaves
    #: its load balancers (a third of the shortest heartbeat timeout a hook may have)
    heartbeat_seconds = 10.0

    def __init__(self, config: Config, elb_here: bool, central: Optional[Central] = None) -> None:
        super().__init__("warden-lifecycle")
        self.config = config
        #: the ELB handler runs in this process: complete once it says it is drained
        self.elb_here = elb_here
        #: where another process of this host says what it enrols the host in
        self.central = central
        self.enrolment_key = ENROLMENT_PREFIX + (config.instance_id or "")
        self._waiting_said = False
        self.lifecycle: Optional[dict] = None
        self.enrolment_drained = threading.Event()
        self.wake = threading.Event()
        #: True once the action was completed (or Auto Scaling no longer waits for it)
        self.completed = False
        self.receivers = signals.Receivers((signals.host_draining, self._on_host_draining),
                                           (signals.enrolment_drained, self._on_enrolment_drained))

    def _on_host_draining(self, sender: Any, *, lifecycle: Optional[dict] = None, **kw: Any) -> None:
        if lifecycle and lifecycle.get("LifecycleHookName") and self.lifecycle is None:
            self.lifecycle = dict(lifecycle)
            self.wake.set()

    def _on_enrolment_drained(self, sender: Any, **kw: Any) -> None:
        self.enrolment_drained.set()
        self.wake.set()

    def on_stop(self) -> None:
        self.wake.set()

    def complete(self, lifecycle: dict) -> None:
        """One CompleteLifecycleAction (raises botocore's errors)."""
        params = {"LifecycleHookName": lifecycle["LifecycleHookName"],
                  "AutoScalingGroupName": lifecycle.get("AutoScalingGroupName") or "",
                  "LifecycleActionResult": "CONTINUE"}
        if lifecycle.get("LifecycleActionToken"):
            params["LifecycleActionToken"] = lifecycle["LifecycleActionToken"]
        else:
            params["InstanceId"] = self.config.instance_id
        aws.client("autoscaling", self.config.region, _CLIENT_CONFIG).complete_lifecycle_action(**params)

    def held_elsewhere(self) -> int:
        """How many load balancers another process of this host still holds it in (0
        when none says so; a central Redis that does not answer counts as "still")."""
        if self.central is None:
            return 0
        try:
            raw = self.central.commands.get(self.enrolment_key)
        except redis.RedisError:
            return 1
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else (raw or "0")
        return int(text) if text.isdigit() else 0

    def _ready(self) -> bool:
        if self.lifecycle is None:
            return False
        if self.elb_here:
            return self.enrolment_drained.is_set()
        held = self.held_elsewhere()
        if held and not self._waiting_said:
            self._waiting_said = True
            logger.info("lifecycle action %s: waiting until this host leaves its %d load balancers "
                        "(the process that runs the elb handler)", self.lifecycle["LifecycleHookName"], held)
        return held == 0

    def heartbeat(self, lifecycle: dict) -> None:
        """One RecordLifecycleActionHeartbeat: the hook waits on (raises botocore's errors)."""
        params = {"LifecycleHookName": lifecycle["LifecycleHookName"],
                  "AutoScalingGroupName": lifecycle.get("AutoScalingGroupName") or ""}
        if lifecycle.get("LifecycleActionToken"):
            params["LifecycleActionToken"] = lifecycle["LifecycleActionToken"]
        else:
            params["InstanceId"] = self.config.instance_id
        aws.client("autoscaling", self.config.region, _CLIENT_CONFIG).record_lifecycle_action_heartbeat(**params)

    def run(self) -> None:
        beat_at: Optional[float] = None
        while not self.stopping and not self._ready():
            if self.lifecycle is not None:
                now = time.monotonic()
                beat_at = beat_at if beat_at is not None else now + self.heartbeat_seconds
                if now >= beat_at:
                    beat_at = now + self.heartbeat_seconds
                    self._beat(self.lifecycle)
            self.wake.wait(self.look_seconds if self.lifecycle is not None else 1.0)
            self.wake.clear()
        if self.stopping or self.lifecycle is None:
            return
        self._complete_until_done(self.lifecycle)

    def _beat(self, lifecycle: dict) -> None:
        """A heartbeat while the host still leaves its load balancers; a failed one is
        logged (the next comes a period later)."""
        try:
            self.heartbeat(lifecycle)
        except Exception as error:  # noqa: BLE001 - a missed heartbeat is retried at the next
            logger.warning("cannot send a heartbeat for lifecycle action %s: %s",
                           lifecycle["LifecycleHookName"], error)
            signals.send(signals.aws_call_failed, self,
                         **aws.failure("autoscaling", error, "RecordLifecycleActionHeartbeat"))
            return
        logger.info("lifecycle action %s: heartbeat sent; this host still leaves its load balancers",
                    lifecycle["LifecycleHookName"])

    def _complete_until_done(self, lifecycle: dict) -> None:
        backoff = Backoff(self.backoff_initial, self.backoff_cap)
        started = time.monotonic()
        name = lifecycle["LifecycleHookName"]
        while not self.stopping:
            try:
                self.complete(lifecycle)
            except botocore.exceptions.ClientError as error:
                message = str((error.response.get("Error") or {}).get("Message") or error)
                if "No active Lifecycle Action" in message:
                    logger.info("lifecycle action %s: Auto Scaling no longer waits (%s)", name, message)
                    self.completed = True
                    return
                failure: Exception = error
            except Exception as error:  # noqa: BLE001 - whatever failed, the action waits: retry
                failure = error
            else:
                self.completed = True
                logger.info("drained: lifecycle action %s completed", name)
                return
            if time.monotonic() - started > self.deadline_seconds:
                logger.error("lifecycle action %s never completed (%s); giving up: the hook "
                             "has timed out", name, failure)
                return
            delay = backoff.next_delay()
            logger.warning("cannot complete lifecycle action %s (%s); again in %.0fs", name,
                           failure, delay)
            signals.send(signals.aws_call_failed, self,
                         **aws.failure("autoscaling", failure, "CompleteLifecycleAction"))
            self.stop_event.wait(delay)


class DrainRecorder:
    """Records why this host drains (``warden:draining:<instanceId>``) for ``warden
    status``, once, whichever source said so, over the process's command connection."""

    def __init__(self, config: Config, central: Central) -> None:
        self.config = config
        self.central = central
        self.recorded = False

    def on_host_draining(self, sender: Any, *, reason: str, **kw: Any) -> None:
        if self.recorded or not self.config.instance_id:
            return
        self.recorded = True
        try:
            self.central.commands.set(DRAINING_PREFIX + self.config.instance_id, reason,
                                      ex=DRAIN_SECONDS * 24)
        except redis.RedisError as error:
            logger.warning("cannot record this host's drain: %s", error)
