"""Every signal Warden emits, declared in one place.

Subscribers (``warden/subscribers/``) and the cores (the Registrar, the Manager, the
Scaler) emit; handlers (Redx, ELB, ECS, alerts, and any a user adds) and the cores
receive with ``(sender, **kw)``. Each signal's doc names its sender and keywords. Always
emit through :func:`send`, which gives each receiver its own ``try``: one failing
receiver never stops the others.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from blinker import ANY, Namespace, Signal

logger = logging.getLogger(__name__)

_signals = Namespace()

container_changed = _signals.signal(
    "container-changed",
    doc="""A Docker event changed a container; sent once the Registrar has taken it into
    its view and emitted the route and enrolment changes. Sender: the Registrar.
    kw: ``action`` (Docker's action, e.g. ``start``, ``kill``, ``health_status``),
    ``container_id``, ``container`` (a fresh :class:`~warden.model.Container`, or
    ``None`` when it is gone), ``stopping`` (True when it is being stopped or killed),
    ``event_time`` (Docker's event time, float seconds).""",
)

route_added = _signals.signal(
    "route-added",
    doc="""A server should be in a Redx backend. Sender: the Registrar.
    kw: ``route`` (:class:`~warden.model.Route`), ``container`` (Container),
    ``event_time`` (Docker's time of the event behind it, or None).""",
)

route_removed = _signals.signal(
    "route-removed",
    doc="""A server should leave a Redx backend. Sender: the Registrar.
    kw: ``route`` (Route), ``container_id``, ``event_time``.""",
)

enrolment_changed = _signals.signal(
    "enrolment-changed",
    doc="""This instance should (``enrolled=True``) or should no longer be enrolled in a
    load balancer or target group. Sender: the Registrar.
    kw: ``target`` (:class:`~warden.model.LoadBalancerTarget`), ``enrolled`` (bool).""",
)

container_target_changed = _signals.signal(
    "container-target-changed",
    doc="""A container should (``registered=True``) or should no longer be a target of
    its service's target group (``targetMode: "container"``): registered once routed
    (ready), deregistered at its ``kill``/``stop``. Sender: the Registrar.
    kw: ``target`` (:class:`~warden.model.ContainerTarget`), ``registered`` (bool).""",
)

enrolment_drained = _signals.signal(
    "enrolment-drained",
    doc="""This host, draining, is enrolled in no load balancer or target group any
    more (sent at once when it was in none). Sender: the ELB handler. No kw.""",
)

services_changed = _signals.signal(
    "services-changed",
    doc="""The service descriptions changed. Sender: the Registrar.
    kw: ``services`` (the new tuple of Service), ``retired`` (a
    :class:`~warden.model.DesiredState` of what the old services held that the new ones
    no longer name: frontends to drop, backends to empty, targets to leave).""",
)

sweep = _signals.signal(
    "sweep",
    doc="""Reconcile the real stores with the desired state. Sender: the Registrar.
    kw: ``desired`` (DesiredState), ``apply`` (False for a dry run), ``wait`` (True
    when the caller needs the changes now; otherwise a handler may do slow work in
    its own thread), ``services`` (the services in force). Receivers return the list of :class:`~warden.model.Change` they
    made (or would make).""",
)

sweep_requested = _signals.signal(
    "sweep-requested",
    doc="""Something suggests the stores drifted (a Docker reconnect, a flushed or
    restarted Redx Redis): the one way to ask the Registrar for a sweep. Sender: the
    subscriber that noticed. kw: ``reason``.""",
)

services_reloaded = _signals.signal(
    "services-reloaded",
    doc="""A service file was added, changed or removed, and the catalog loaded them
    again. Sender: the service watcher. kw: ``services`` (the services now in force),
    ``paths`` (the files that changed).""",
)

settings_reloaded = _signals.signal(
    "settings-reloaded",
    doc="""SIGHUP read a config file that loads, and some keys that can change live
    changed. Sender: the daemon. kw: ``config`` (the config as read again),
    ``keys`` (the live keys that changed, as the file spells them: ``labelFrontends``,
    ``labelLoadBalancers``, ``logLevel``, ``logFormat``, ``alerts``).""",
)

label_service_proposed = _signals.signal(
    "label-service-proposed",
    doc="""A container's labels define a service that is not yet in force, and the
    operator's patterns allow it: each handler may object for its own store, where the
    service's keys already hold what Warden did not write. Sender: the Registrar.
    kw: ``service`` (the :class:`~warden.services.Service`), ``ownership`` (the
    :class:`~warden.model.Ownership` rule of this host). Receivers return ``(label,
    reason)`` (``label`` without the prefix, e.g. ``"frontend"``) to refuse it, or None.""",
)

redx_key_failed = _signals.signal(
    "redx-key-failed",
    doc="""A key in the Redx Redis could not be read or written (a key of the wrong type,
    say): its service is skipped, the others go on. Sender: the Redx handler.
    kw: ``key``, ``error`` (text).""",
)

change_made = _signals.signal(
    "change-made",
    doc="""A handler changed a store. Sender: the handler.
    kw: ``change`` (Change), ``service`` (name or None), ``container_id``.""",
)

handler_error = _signals.signal(
    "handler-error",
    doc="""A receiver raised. Sender: the signal's sender. kw: ``signal_name``,
    ``receiver`` (its name), ``error`` (the exception).""",
)


control_received = _signals.signal(
    "control-received",
    doc="""A valid control message arrived on a ``warden:*`` channel. Sender: the
    control-channel subscriber. kw: ``message`` (:class:`~warden.control.ControlMessage`).""",
)

control_rejected = _signals.signal(
    "control-rejected",
    doc="""A control message was ignored (malformed, unsigned, badly signed, replayed).
    Sender: the control-channel subscriber, or the AWS events consumer (channel
    ``aws-events``) for a malformed queue message. kw: ``channel``, ``reason``.""",
)

control_subscription = _signals.signal(
    "control-subscription",
    doc="""The control channels' subscription was confirmed (``held`` True: the first
    time and after every reconnect, when anything published meanwhile was lost, so the
    keys are worth reading again) or lost (``held`` False). Sender: the control-channel
    subscriber. kw: ``held``.""",
)

leadership_gained = _signals.signal(
    "leadership-gained",
    doc="""This instance became the leader. Sender: the Manager.
    kw: ``instance_id``, ``epoch`` (its fencing token), ``zone``.""",
)

leadership_lost = _signals.signal(
    "leadership-lost",
    doc="""This instance stopped leading. Sender: the Manager.
    kw: ``instance_id``, ``epoch``, ``reason`` (e.g. ``killed``, ``not-mine``,
    ``zone inactive``, ``shutdown``).""",
)

acting_changed = _signals.signal(
    "acting-changed",
    doc="""The leader holds every action on the cluster (``acting`` False: fewer replicas
    of the central Redis acknowledged its writes than ``minReplicasToAct``, as on a
    primary cut off from its replicas), or acts again (True). Sender: the Manager.
    kw: ``instance_id``, ``epoch``, ``acting`` (bool), ``reason`` (why it holds, or "").""",
)

claim_abandoned = _signals.signal(
    "claim-abandoned",
    doc="""A claim was handed back before it ever acted: no replica acknowledged it
    within the lease (a replica that is attached but never acknowledges: a full
    resync, a stalled replica). Sender: the Manager. kw: ``instance_id``, ``epoch``,
    ``reason``.""",
)

scaling_pass = _signals.signal(
    "scaling-pass",
    doc="""The leader asks for one scaling pass for a service. Sender: the Scaler.
    kw: ``service`` (Service), ``metric`` (its value), ``steps`` (the step table in
    force), ``epoch``, ``fence`` (call right before each action; False: do nothing).
    The ECS handler returns a ScalingResult.""",
)

scaled = _signals.signal(
    "scaled",
    doc="""A scaling pass changed the task count. Sender: the ECS handler.
    kw: ``service`` (name), ``metric``, ``desired``, ``running`` (before the pass),
    ``started``, ``stopped``, ``epoch``.""",
)

metric_failed = _signals.signal(
    "metric-failed",
    doc="""A service's metric (or its steps) could not be read; the count holds.
    Sender: the Scaler. kw: ``service`` (name), ``error`` (text).""",
)

scaling_failed = _signals.signal(
    "scaling-failed",
    doc="""An ECS call of a scaling pass failed. Sender: the ECS handler.
    kw: ``service`` (name), ``error`` (text).""",
)

sweep_done = _signals.signal(
    "sweep-done",
    doc="""A sweep finished. Sender: the Registrar. kw: ``reason``, ``changes`` (the
    list of Change it made: the drift it corrected), ``seconds``.""",
)

scaling_checked = _signals.signal(
    "scaling-checked",
    doc="""A scaling pass counted a service's tasks. Sender: the ECS handler.
    kw: ``service`` (name), ``desired``, ``running``.""",
)

aws_call_failed = _signals.signal(
    "aws-call-failed",
    doc="""An AWS API call failed (after botocore's retries). Sender: the handler that
    made it, or the lifecycle completer. kw (see :func:`warden.runtime.aws.failure`):
    ``service`` (``elb``, ``elbv2``, ``ecs``, ``autoscaling``), ``operation``
    (``RegisterTargets``), ``code`` (``Throttling``, ``ReadTimeoutError``), ``error`` (text).""",
)

aws_event = _signals.signal(
    "aws-event",
    doc="""An AWS event arrived through EventBridge and the SQS queue. Sender: the AWS
    events consumer. kw: ``event`` (:class:`~warden.subscribers.aws_events.AwsEvent`).
    A receiver that could not store the event's effect (the central Redis did not
    answer) returns False: the message then stays on the queue and comes back.""",
)

aws_event_refused = _signals.signal(
    "aws-event-refused",
    doc="""An AWS event was refused: not from the AWS source of its detail type, of
    another account or region, or a drain claim the API did not confirm. Sender: the
    AWS events consumer or the drain relay. kw: ``reason`` (a short snake_case word),
    ``detail_type``.""",
)

host_draining = _signals.signal(
    "host-draining",
    doc="""This host is being drained (spot interruption, Auto Scaling termination):
    leave every load balancer, hand leadership over, stand in no election. Sender: the
    drain watcher (the drain key) or the metadata notices (this instance's own). kw: ``reason``, ``lifecycle`` (dict with
    ``LifecycleHookName``, ``AutoScalingGroupName``, ``LifecycleActionToken`` when an
    Auto Scaling lifecycle hook waits for it, else None).""",
)


host_resting = _signals.signal(
    "host-resting",
    doc="""A spot rebalance recommendation names this host and ``rebalanceDrain`` is on:
    leave the load balancers early, for ``seconds``, but keep the leadership and the
    routes: an interruption may follow, or not. Sender: the drain watcher.
    kw: ``reason``, ``seconds``.""",
)

host_rejoining = _signals.signal(
    "host-rejoining",
    doc="""No interruption came within ``rebalanceDrainSeconds`` of a rebalance
    recommendation: join the load balancers again. Sender: the drain watcher. kw:
    ``reason``.""",
)


def every_signal() -> dict[str, Signal]:
    """Every signal above, by name."""
    return dict(_signals)


def send(signal: Signal, sender: Any, /, **kw: Any) -> list[tuple[Any, Any]]:
    """Send ``signal`` to each receiver in its own ``try`` and return ``(receiver,
    result)`` pairs for those that returned. A receiver that raises is logged at
    ``critical`` and skipped; the others still run."""
    results = []
    for receiver in list(signal.receivers_for(sender)):
        try:
            results.append((receiver, receiver(sender, **kw)))
        except Exception as error:  # noqa: BLE001 - one receiver must not stop the rest
            name = getattr(receiver, "__qualname__", repr(receiver))
            logger.critical("receiver %s of %s failed: %s", name, signal.name, error,
                            exc_info=True)
            if signal is not handler_error:
                send(handler_error, sender, signal_name=signal.name, receiver=name, error=error)
    return results


class Receivers:
    """A component's receivers, connected together in its ``start`` and disconnected
    together in its ``stop`` (strongly held: blinker silently drops weakly held ones)."""

    def __init__(self, *pairs: tuple[Signal, Callable[..., Any]], sender: Any = ANY) -> None:
        self.pairs = pairs
        #: only this sender's signals reach them (any sender's by default)
        self.sender = sender

    def connect(self) -> None:
        for signal, receiver in self.pairs:
            signal.connect(receiver, sender=self.sender, weak=False)

    def disconnect(self) -> None:
        for signal, receiver in self.pairs:
            signal.disconnect(receiver)
