"""AWS events through EventBridge and SQS (moto delivers put_events to an SQS target),
drains, and this host's own notices through a stand-in for instance metadata."""

from __future__ import annotations

import json
import time
import uuid
from http.server import BaseHTTPRequestHandler

import pytest

from conftest import eventually, serve_http
from warden import signals
from warden.config import Config
from warden.handlers.elb import ElbHandler
from warden.model import LoadBalancerTarget


def worker(ecs, metric: dict) -> dict:
    return {"name": "worker", "port": 80, "taskName": ecs.task_family, "cluster": ecs.name,
            "metric": metric, "scaling": {"scaleDownDelaySeconds": 0, "maxTasks": 10},
            "runTask": {"launchType": "FARGATE", "networkConfiguration": ecs.awsvpc}}


def running(ecs) -> list:
    return [t for t in ecs.tasks() if t["startedBy"] == "warden"]


def test_a_stopped_task_is_replaced_at_once(ecs, events, central, managers, aws):
    managers("i-a", services=[worker(ecs, {"type": "static", "value": 2})],
             handlers=["ecs"], managerSleepTimeSeconds=600, awsEventsQueueUrl=events.queue_url)
    eventually(lambda: len(running(ecs)) == 2, 15, what="two tasks")
    victim = running(ecs)[0]
    aws.ecs.stop_task(cluster=ecs.name, task=victim["taskArn"], reason="OutOfMemoryError")
    assert len(running(ecs)) == 1
    events.emit("ECS Task State Change", "aws.ecs", {
        "taskArn": victim["taskArn"], "taskDefinitionArn": victim["taskDefinitionArn"],
        "lastStatus": "STOPPED", "desiredStatus": "STOPPED", "stoppedReason": "OutOfMemoryError"})
    eventually(lambda: len(running(ecs)) == 2, 10, what="the stopped task replaced")
    eventually(lambda: events.waiting() == 0, 10, what="the message deleted")


def test_an_alarm_state_change_triggers_a_pass(ecs, events, central, managers):
    central.set("demand:worker", "1")
    service = worker(ecs, {"type": "redis", "key": "demand:worker", "alarmName": "worker-backlog"})
    managers("i-a", services=[service], handlers=["ecs"], managerSleepTimeSeconds=600,
             awsEventsQueueUrl=events.queue_url)
    eventually(lambda: len(running(ecs)) == 1, 15, what="one task")
    central.set("demand:worker", "4")  # no nudge on warden:metric: only the alarm says so
    time.sleep(1.5)
    assert len(running(ecs)) == 1
    events.emit("CloudWatch Alarm State Change", "aws.cloudwatch",
                {"alarmName": "worker-backlog", "state": {"value": "ALARM"}})
    eventually(lambda: len(running(ecs)) == 4, 10, what="the pass the alarm asked for")


def test_a_spot_warning_drains_the_host_it_names(events, central, managers):
    a = managers("i-a", awsEventsQueueUrl=events.queue_url)
    eventually(lambda: central.hget("service-manager", "id") == "i-a", 10, what="i-a leads")
    b = managers("i-b", awsEventsQueueUrl=events.queue_url)
    time.sleep(1)
    events.emit("EC2 Spot Instance Interruption Warning", "aws.ec2",
                {"instance-id": "i-a", "instance-action": "terminate"})
    eventually(lambda: central.hget("service-manager", "id") == "i-b", 15, what="leadership moved")
    assert "draining (EC2 Spot Instance Interruption Warning)" in a.log()
    assert central.get("warden:draining:i-a") == "EC2 Spot Instance Interruption Warning"
    status = json.loads(a.command("status", "--json", check=True).stdout)
    assert status["draining"] == "EC2 Spot Instance Interruption Warning"
    # The drained host stands in no election, even with no leader left.
    b.stop()
    time.sleep(3)
    assert central.hget("service-manager", "id") is None


def test_a_drain_the_central_redis_could_not_store_is_delivered_again(events, central, central_server, managers):
    """The leader relays a spot warning by writing the target's drain key: when the
    central Redis does not answer at that moment, the message stays on the queue and
    comes back, instead of being deleted with the drain lost."""
    import os
    import signal

    a = managers("i-a", awsEventsQueueUrl=events.queue_url, leaseSeconds=10)
    eventually(lambda: "leadership gained" in a.log(), 10, what="i-a leads")
    time.sleep(0.5)  # its first poll of the queue
    os.kill(central_server.process.pid, signal.SIGSTOP)
    try:
        events.emit("EC2 Spot Instance Interruption Warning", "aws.ec2",
                    {"instance-id": "i-b", "instance-action": "terminate"})
        eventually(lambda: "cannot record the drain of i-b" in a.log(), 15, what="the failed write")
    finally:
        os.kill(central_server.process.pid, signal.SIGCONT)
    assert events.waiting() == 1, "the message was deleted with its drain unrecorded"
    eventually(lambda: central.get("warden:drain:i-b") is not None, 20, what="the drain recorded on redelivery")
    assert json.loads(central.get("warden:drain:i-b"))["reason"] == "EC2 Spot Instance Interruption Warning"
    eventually(lambda: events.waiting() == 0, 10, what="the message deleted once stored")


def test_malformed_messages_are_counted_and_deleted(events, central, managers, aws):
    m = managers("i-a", awsEventsQueueUrl=events.queue_url)
    eventually(lambda: central.hget("service-manager", "id") == "i-a", 10, what="i-a leads")
    for body in ("not json", "[1, 2]", json.dumps({"detail-type": 7})):
        aws.sqs.send_message(QueueUrl=events.queue_url, MessageBody=body)
    eventually(lambda: m.log().count("malformed message on the AWS events queue") == 3, 15,
               what="three malformed messages")
    eventually(lambda: events.waiting() == 0, 10, what="all deleted")
    assert central.hget("service-manager", "id") == "i-a"


def test_an_unreachable_queue_is_retried(aws, central, managers, moto):
    name = f"later-{uuid.uuid4().hex[:6]}"
    url = f"{moto}/123456789012/{name}"
    m = managers("i-a", awsEventsQueueUrl=url)
    eventually(lambda: "AWS events queue unreachable" in m.log(), 15, what="the failure logged")
    assert central.hget("service-manager", "id") == "i-a", "leadership is unaffected"
    aws.sqs.create_queue(QueueName=name)
    aws.sqs.send_message(QueueUrl=url, MessageBody="garbage")
    eventually(lambda: "AWS events queue reachable again" in m.log(), 40, what="recovered")


def test_draining_deregisters_from_every_load_balancer(aws, tmp_path):
    image = aws.ec2.describe_images()["Images"][0]["ImageId"]
    instance = aws.ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    name = f"elb-{uuid.uuid4().hex[:6]}"
    aws.elb.create_load_balancer(LoadBalancerName=name, AvailabilityZones=["us-east-1a"],
                                 Listeners=[{"Protocol": "HTTP", "LoadBalancerPort": 80, "InstancePort": 80}])
    handler = ElbHandler(Config(path=str(tmp_path / "c.json"), display_path="c.json",
                                instance_id=instance, region="us-east-1"))
    handler.connect()
    handler.start()
    target = LoadBalancerTarget("elb", name)

    def enrolled() -> bool:
        found = aws.elb.describe_load_balancers(LoadBalancerNames=[name])["LoadBalancerDescriptions"][0]
        return any(i["InstanceId"] == instance for i in found["Instances"])

    try:
        signals.send(signals.enrolment_changed, "test", target=target, enrolled=True)
        eventually(enrolled, 10, what="enrolled")
        signals.send(signals.host_draining, "test", reason="spot", lifecycle=None)
        eventually(lambda: not enrolled(), 10, what="deregistered on draining")
        signals.send(signals.enrolment_changed, "test", target=target, enrolled=True)
        time.sleep(1.5)
        assert not enrolled(), "a draining host joins nothing again"
    finally:
        handler.stop()
        handler.disconnect()


@pytest.fixture
def metadata_stand_in():
    """A local stand-in for EC2 instance metadata (IMDSv2), which cannot run here."""
    state = {"spot/instance-action": None, "instance-id": "i-meta",
             "placement/availability-zone": "us-east-1a", "placement/region": "us-east-1",
             "autoscaling/target-lifecycle-state": "InService"}

    class Metadata(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self._reply(200, "token-1" if self.path == "/latest/api/token" else None)

        def do_GET(self) -> None:
            if self.headers.get("X-aws-ec2-metadata-token") != "token-1":
                return self._reply(401, None)
            self._reply(200, state.get(self.path.removeprefix("/latest/meta-data/")))

        def _reply(self, status: int, body) -> None:
            if body is None:
                status, body = 404, "not found"
            self.send_response(status)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args) -> None:
            pass

    with serve_http(Metadata) as url:
        yield url, state


def test_this_hosts_spot_notice_in_metadata_drains_it(central, managers, metadata_stand_in):
    url, state = metadata_stand_in
    m = managers("i-meta", start=False)
    del m.env["WARDEN_INSTANCE_ID"]
    m.env.pop("AWS_EC2_METADATA_DISABLED")
    m.env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = url
    m.start("manager")
    eventually(lambda: central.hget("service-manager", "id") == "i-meta", 10,
               what="the identity from metadata leads")
    state["spot/instance-action"] = '{"action": "terminate", "time": "2026-11-26T12:00:00Z"}'
    eventually(lambda: central.hget("service-manager", "id") is None, 15, what="handed back")
    assert "spot interruption notice" in m.log()


def test_forged_events_on_the_queue_drain_no_host(events, central, managers, aws):
    """Warden read an event's ``source`` and never checked it, nor its account or
    region, and never confirmed a drain: anyone who may send to the queue drained any
    host (``source: "not.aws.at.all"`` drained two hosts in the review)."""
    from conftest import free_port, http_get

    metrics = free_port()
    chief = managers("i-a", awsEventsQueueUrl=events.queue_url, region="us-east-1",
                     metricsAddress=f"127.0.0.1:{metrics}")
    eventually(lambda: central.hget("service-manager", "id") == "i-a", 10, what="i-a leads")
    managers("i-b", awsEventsQueueUrl=events.queue_url, region="us-east-1")

    def forge(detail_type: str, source: str, detail: dict, account: str = "123456789012",
              region: str = "us-east-1") -> None:
        aws.sqs.send_message(QueueUrl=events.queue_url, MessageBody=json.dumps({
            "version": "0", "id": str(uuid.uuid4()), "detail-type": detail_type, "source": source,
            "account": account, "time": "2026-12-08T00:00:00Z", "region": region, "resources": [],
            "detail": detail}))

    spot = "EC2 Spot Instance Interruption Warning"
    forge(spot, "not.aws.at.all", {"instance-id": "i-b", "instance-action": "terminate"})
    forge(spot, "aws.ec2", {"instance-id": "i-b", "instance-action": "terminate"}, account="999999999999")
    forge(spot, "aws.ec2", {"instance-id": "i-b", "instance-action": "terminate"}, region="eu-west-1")
    forge(spot, "not.aws.at.all", {"instance-id": "i-b", "instance-action": "terminate"})
    # Well formed, but Auto Scaling has no such instance terminating.
    forge("EC2 Instance-terminate Lifecycle Action", "aws.autoscaling",
          {"EC2InstanceId": "i-b", "LifecycleHookName": "drain-hook", "AutoScalingGroupName": "web-asg",
           "LifecycleActionToken": str(uuid.uuid4()), "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING"})
    eventually(lambda: events.waiting() == 0, 15, what="the forged messages taken and deleted")
    assert central.get("warden:drain:i-b") is None, "a forged event drained i-b"
    text = http_get(f"http://127.0.0.1:{metrics}/metrics")[1]
    for reason, count in (("wrong_source", 2), ("wrong_account", 1), ("wrong_region", 1), ("not_confirmed", 1)):
        assert f'warden_aws_events_refused_total{{reason="{reason}"}} {count}.0' in text, reason
    assert sum(1 for line in chief.log().splitlines() if " WARNING " in line and "refused an AWS event" in line) == 4, \
        "each reason said once"
    assert "not from the AWS source of its detail type" in chief.log()
    assert "AWS events refused: not_confirmed 1, wrong_account 1, wrong_region 1, wrong_source 2" in \
        chief.command("status").stdout
    assert "Auto Scaling does not have i-b terminating (it is in no group 'web-asg')" in chief.log()
    # A genuine warning still drains the host it names.
    events.emit(spot, "aws.ec2", {"instance-id": "i-b", "instance-action": "terminate"})
    eventually(lambda: central.get("warden:drain:i-b") is not None, 10, what="the genuine warning relayed")


def test_on_ec2_a_relayed_spot_warning_needs_the_hosts_own_metadata(events, central, managers, metadata_stand_in):
    """A spot warning from the queue is believed on an EC2 host only once its own
    instance metadata shows the notice (the API shows nothing of it before the reclaim)."""
    url, state = metadata_stand_in
    m = managers("i-meta", start=False, awsEventsQueueUrl=events.queue_url, region="us-east-1")
    del m.env["WARDEN_INSTANCE_ID"]
    m.env.pop("AWS_EC2_METADATA_DISABLED")
    m.env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = url
    m.start("manager")
    eventually(lambda: central.hget("service-manager", "id") == "i-meta", 10, what="the EC2 host leads")
    events.emit("EC2 Spot Instance Interruption Warning", "aws.ec2",
                {"instance-id": "i-meta", "instance-action": "terminate"})
    eventually(lambda: "that this instance's metadata does not show" in m.log(), 10, what="not confirmed")
    time.sleep(1)
    assert central.hget("service-manager", "id") == "i-meta", "drained on a notice its metadata does not show"
    state["spot/instance-action"] = '{"action": "terminate", "time": "2026-12-08T12:00:00Z"}'
    eventually(lambda: central.hget("service-manager", "id") is None, 15, what="drained once metadata shows it")
