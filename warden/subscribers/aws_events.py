"""AWS events: EventBridge envelopes read from an SQS queue by the leader, and this
host's own interruption notices from instance metadata.

The leader (and only while it leads) long-polls ``awsEventsQueueUrl``, turns each
envelope into an :class:`AwsEvent` and emits ``aws_event``; a message is deleted only
after its receivers stored its effect. One that a receiver could not store is made
visible again after :attr:`AwsEventsConsumer.retry_seconds`, to be taken again. A
malformed message is logged, counted and deleted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import botocore.config
import botocore.exceptions

from warden import signals

from warden.runtime import aws
from warden.runtime.metadata import fetch_metadata
from warden.runtime.threads import ConnectionLoop, StoppableThread

logger = logging.getLogger(__name__)

#: the EventBridge detail types Warden acts on: Warden's kind, and the AWS service the
#: type comes from. An event is believed only from that source (a PutEvents from anyone
#: else cannot carry an ``aws.`` source; a message sent to the queue directly can, which
#: is why the account and region are checked too, and a drain claim is confirmed where
#: the API can tell)
KINDS = {
    "ECS Task State Change": ("task-state", "aws.ecs"),
    "CloudWatch Alarm State Change": ("alarm-state", "aws.cloudwatch"),
    "EC2 Spot Instance Interruption Warning": ("spot-interruption", "aws.ec2"),
    "EC2 Instance-terminate Lifecycle Action": ("terminate-lifecycle", "aws.autoscaling"),
    "EC2 Instance Rebalance Recommendation": ("rebalance-recommendation", "aws.ec2"),
}
_CLIENT_CONFIG = botocore.config.Config(connect_timeout=3, read_timeout=25,
                                        retries={"mode": "standard", "max_attempts": 3})


@dataclass(frozen=True)
class AwsEvent:
    """One EventBridge event Warden acts on."""

    kind: str  # a kind of KINDS
    detail_type: str
    source: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    id: str = ""
    #: the account and region the envelope says it comes from
    account: str = ""
    region: str = ""

    @property
    def instance_id(self) -> Optional[str]:
        """The EC2 instance a spot warning or terminate action names."""
        return self.detail.get("instance-id") or self.detail.get("EC2InstanceId")

    @property
    def task_family(self) -> Optional[str]:
        """The task definition family of an ECS task state change."""
        arn = self.detail.get("taskDefinitionArn") or ""
        name = arn.rsplit("/", 1)[-1]
        return name.rsplit(":", 1)[0] if name else None


class MalformedEvent(ValueError):
    """Not an EventBridge envelope Warden understands; the text says why."""


def parse_envelope(body: str) -> Optional[AwsEvent]:
    """The event in ``body``, None for a well-formed event of a type Warden ignores,
    or :class:`MalformedEvent`."""
    if len(body) > 256 * 1024:
        raise MalformedEvent("larger than an SQS message can be")
    try:
        data = json.loads(body)
    except ValueError:
        raise MalformedEvent("not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("detail-type"), str) \
            or not isinstance(data.get("detail", {}), dict):
        raise MalformedEvent("not an EventBridge envelope (detail-type, detail)")
    if data["detail-type"] not in KINDS:
        return None
    kind = KINDS[data["detail-type"]][0]
    return AwsEvent(kind, data["detail-type"], str(data.get("source") or ""),
                    data.get("detail") or {}, str(data.get("id") or ""),
                    str(data.get("account") or ""), str(data.get("region") or ""))


def refusal(event: AwsEvent, account: str, region: Optional[str]) -> Optional[str]:
    """Why ``event`` is not believed (a reason counted), or None: it must come from the
    AWS source of its detail type, for this ``account`` and ``region``."""
    if event.source != KINDS[event.detail_type][1]:
        return "wrong_source"
    if event.account != account:
        return "wrong_account"
    if region and event.region != region:
        return "wrong_region"
    return None


#: the central Redis hash where leaders count refused AWS events by reason, for
#: ``warden status``
REFUSED_KEY = "warden:aws-events:refused"


class Refusals:
    """Refused AWS events: counted by reason (here, in metrics, and in the central
    Redis through ``central`` when given, for ``warden status``), logged once per
    reason."""

    def __init__(self, central: Any = None) -> None:
        self.counts: dict[str, int] = {}
        self.central = central

    def refuse(self, sender: Any, event: AwsEvent, reason: str, why: str) -> None:
        first = reason not in self.counts
        self.counts[reason] = self.counts.get(reason, 0) + 1
        (logger.warning if first else logger.debug)(
            "refused an AWS event %s (source %r, account %r, region %r): %s%s", event.detail_type, event.source,
            event.account, event.region, why, "; further ones with this reason are counted only" if first else "")
        signals.send(signals.aws_event_refused, sender, reason=reason, detail_type=event.detail_type)
        if self.central is not None:
            try:
                self.central.hincrby(REFUSED_KEY, reason, 1)
            except Exception as error:  # noqa: BLE001 - the count for status is a courtesy; the metric holds it
                logger.debug("cannot count the refusal in the central Redis: %s", error)


#: what each refusal reason means, for the log
_WHY = {"wrong_source": "not from the AWS source of its detail type",
        "wrong_account": "not of this account", "wrong_region": "not of this region"}


class AwsEventsConsumer(ConnectionLoop):
    """Long-polls the events queue while ``is_leader()`` says this instance leads."""

    #: long-poll wait, seconds (also how long a stop may wait for a poll to end)
    wait_seconds = 5
    backoff_initial = 1.0
    backoff_cap = 30.0
    what = "AWS events queue"
    lost = aws.ERRORS
    #: seconds before a message whose effect was not stored is delivered again
    retry_seconds = 2

    def __init__(self, queue_url: str, region: Optional[str], is_leader: Callable[[], bool],
                 central: Any = None) -> None:
        super().__init__("warden-aws-events")
        self.queue_url = queue_url
        self.region = region
        self.is_leader = is_leader
        self._client: Any = None
        #: messages handled, and malformed ones
        self.handled = 0
        self.malformed = 0
        #: this account (STS GetCallerIdentity, asked once): events of another are refused
        self.account: Optional[str] = None
        self.refusals = Refusals(central)

    def client(self) -> Any:
        if self._client is None:
            self._client = aws.client("sqs", self.region, _CLIENT_CONFIG)
        return self._client

    def poll(self) -> int:
        """One receive; returns the messages taken."""
        if self.account is None:
            # Known before any event is taken: an event is judged by it.
            self.account = str(aws.client("sts", self.region, _CLIENT_CONFIG).get_caller_identity()["Account"])
        reply = self.client().receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                                              WaitTimeSeconds=self.wait_seconds)
        messages = reply.get("Messages") or []
        for message in messages:
            try:
                event = parse_envelope(message.get("Body") or "")
            except MalformedEvent as error:
                self.malformed += 1
                logger.warning("malformed message on the AWS events queue (%s); deleted", error)
                signals.send(signals.control_rejected, self, channel="aws-events", reason="malformed_event")
                event = None
            reason = refusal(event, self.account, self.region) if event is not None else None
            if event is not None and reason is not None:
                self.refusals.refuse(self, event, reason, _WHY[reason])
                event = None
            if event is not None:
                logger.info("AWS event: %s", event.detail_type)
                results = signals.send(signals.aws_event, self, event=event)
                self.handled += 1
                if any(result is False for _, result in results):
                    self.client().change_message_visibility(
                        QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"],
                        VisibilityTimeout=self.retry_seconds)
                    continue
            self.client().delete_message(QueueUrl=self.queue_url,
                                         ReceiptHandle=message["ReceiptHandle"])
        return len(messages)

    def open(self) -> Any:
        return self.client()

    def reconnected(self) -> None:
        logger.info("AWS events queue reachable again")

    def serve(self, client: Any) -> None:
        while not self.stopping:
            if not self.is_leader():
                self.stop_event.wait(0.5)
                continue
            self.poll()
            self.held()


class MetadataNotices(StoppableThread):
    """Polls this instance's own notices in instance metadata (IMDSv2): a spot
    ``instance-action``, or an Auto Scaling target lifecycle state of ``Terminated``."""

    #: seconds between polls
    interval = 5.0

    def __init__(self) -> None:
        super().__init__("warden-metadata-notices")
        self.noticed = False

    def check(self) -> Optional[str]:
        """Why this host must drain, or None."""
        found = fetch_metadata(["spot/instance-action", "autoscaling/target-lifecycle-state"]) or {}
        if found.get("spot/instance-action"):
            return f"spot interruption notice: {found['spot/instance-action']}"
        if found.get("autoscaling/target-lifecycle-state") == "Terminated":
            return "Auto Scaling target lifecycle state Terminated"
        return None

    def run(self) -> None:
        while not self.noticed and not self.stop_event.wait(self.interval):
            reason = self.check()
            if reason:
                self.noticed = True
                logger.warning("instance metadata: %s", reason)
                signals.send(signals.host_draining, self, reason=reason, lifecycle=None)
