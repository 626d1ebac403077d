"""The moto server and what the tests build in it (ECS, ELB, SQS and EventBridge), and an HTTP proxy in front of it that records, throttles and stalls calls."""

from __future__ import annotations
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any
import pytest

from support.common import RUN, eventually, free_port, serve_http


@pytest.fixture(scope="session")
def moto() -> Any:
    """The moto server on a port of its own; yields its endpoint URL."""
    binary = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    if binary is None:
        pytest.fail("moto_server is not installed: run scripts/test, which installs moto[server]")
    port = free_port()
    process = subprocess.Popen([binary, "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    eventually(lambda: urllib.request.urlopen(url + "/moto-api/", timeout=1).status == 200,
               30, what="moto server")
    yield url
    process.terminate()
    process.wait(10)


AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture
def aws(moto: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """boto3 pointed at the moto server (for the test's own calls too)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    import boto3

    class Clients:
        endpoint = moto

        def __getattr__(self, service: str) -> Any:
            return boto3.client(service, region_name="us-east-1")

    return Clients()


@pytest.fixture
def events(aws: Any) -> Any:
    """An SQS queue fed by an EventBridge rule; ``events.emit(type, source, detail)``."""
    name = f"warden-events-{uuid.uuid4().hex[:6]}"
    url = aws.sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    rule = f"rule-{name}"
    aws.events.put_rule(Name=rule, EventPattern=json.dumps(
        {"source": ["aws.ecs", "aws.cloudwatch", "aws.ec2", "aws.autoscaling"]}))
    # The whole event as the target's input (EventBridge's <aws.events.event.json>) is
    # what a plain target gets on AWS; moto's plain target drops the envelope's
    # "account", which Warden checks.
    aws.events.put_targets(Rule=rule, Targets=[{"Id": "warden", "Arn": arn, "InputTransformer": {
        "InputPathsMap": {}, "InputTemplate": "<aws.events.event.json>"}}])

    class Events:
        queue_url = url

        def emit(self, detail_type: str, source: str, detail: dict) -> None:
            reply = aws.events.put_events(Entries=[{"Source": source, "DetailType": detail_type,
                                                     "Detail": json.dumps(detail)}])
            assert reply["FailedEntryCount"] == 0

        def waiting(self) -> int:
            attributes = aws.sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                              "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
            return int(attributes["ApproximateNumberOfMessages"]) + \
                int(attributes["ApproximateNumberOfMessagesNotVisible"])

    return Events()


@pytest.fixture
def ecs(aws: Any) -> Any:
    """A cluster on moto's ECS with a Fargate task definition."""
    cluster = f"c-{uuid.uuid4().hex[:6]}"
    family = f"web-{uuid.uuid4().hex[:6]}"
    aws.ecs.create_cluster(clusterName=cluster)
    aws.ecs.register_task_definition(family=family, requiresCompatibilities=["FARGATE"],
                                     networkMode="awsvpc", cpu="256", memory="512",
                                     containerDefinitions=[{"name": "web", "image": "web",
                                                            "memory": 64, "cpu": 10}])
    client = aws.ecs
    subnet = aws.ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    group = aws.ec2.describe_security_groups()["SecurityGroups"][0]["GroupId"]

    class Ecs:
        name = cluster
        task_family = family
        awsvpc = {"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group],
                                          "assignPublicIp": "DISABLED"}}

        def tasks(self, **filters):
            arns = client.list_tasks(cluster=cluster, family=family, desiredStatus="RUNNING")["taskArns"]
            found = []
            for start in range(0, len(arns), 100):
                found += client.describe_tasks(cluster=cluster, tasks=arns[start:start + 100],
                                               include=["TAGS"])["tasks"]
            return found

    return Ecs()


def terminating(instance_id: str, group: str = "web-asg") -> bytes:
    """DescribeAutoScalingInstances as AWS answers it while a terminate lifecycle hook
    holds ``instance_id`` (moto's instances never leave InService): a planned answer."""
    return (f"<DescribeAutoScalingInstancesResponse><DescribeAutoScalingInstancesResult><AutoScalingInstances>"
            f"<member><InstanceId>{instance_id}</InstanceId><AutoScalingGroupName>{group}</AutoScalingGroupName>"
            f"<AvailabilityZone>us-east-1a</AvailabilityZone><LifecycleState>Terminating:Wait</LifecycleState>"
            f"<HealthStatus>HEALTHY</HealthStatus><ProtectedFromScaleIn>false</ProtectedFromScaleIn>"
            f"</member></AutoScalingInstances></DescribeAutoScalingInstancesResult><ResponseMetadata>"
            f"<RequestId>warden-test</RequestId></ResponseMetadata></DescribeAutoScalingInstancesResponse>").encode()


class AwsProxy:
    """An HTTP proxy of the tests' own in front of the moto server: it records each AWS
    operation it passes (by ``X-Amz-Target``, or the query protocol's ``Action``) with
    its time, and answers the operations a test names (``plan``), or every request
    (``mode``), with throttling, a 503 or silence."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        #: (monotonic time, operation, request body) of every request
        self.calls: list[tuple[float, str, bytes]] = []
        #: operation -> what to answer, in order: "503", "stall" (then 503), "hold" (then
        #: pass, once the test sets ``unhold``), "pass", bytes (that answer, as AWS would
        #: give it: :func:`terminating`), or
        #: "empty-result": the query protocol's empty success, a stand-in for an operation
        #: moto lacks (CompleteLifecycleAction); an operation whose list is used up passes
        self.plan: dict[str, list[Any]] = {}
        #: what every request gets, whatever the plan: "pass", "throttle", "garbled" (a
        #: body in the wrong protocol), "503", "stall"
        self.mode = "pass"
        #: requests answered with a fault
        self.faults = 0
        #: seconds a target deregistered through the proxy is reported ``draining`` by
        #: DescribeTargetHealth (moto drops it at once, as if its group's deregistration
        #: delay were 0); 0: as moto answers
        self.drain_seconds = 0.0
        #: (group ARN, Id, Port, monotonic time it stops draining)
        self.draining: list[tuple[str, str, str, float]] = []
        #: set at teardown, so a stalled request ends at once
        self.release = threading.Event()
        #: "hold": the request waits here until ``unhold`` is set, then passes
        self.holding = threading.Event()
        self.unhold = threading.Event()
        self.url = ""

    def operation(self, headers: Any, body: bytes) -> str:
        target = headers.get("X-Amz-Target")
        if target:
            return target.rsplit(".", 1)[-1]
        from urllib.parse import parse_qs

        return (parse_qs(body.decode(errors="replace")).get("Action") or [""])[0]

    def note_deregistered(self, body: bytes) -> None:
        """A DeregisterTargets passed: its targets drain for ``drain_seconds``."""
        from urllib.parse import parse_qs

        form = parse_qs(body.decode(errors="replace"))
        arn, n = form["TargetGroupArn"][0], 1
        until = time.monotonic() + self.drain_seconds
        while f"Targets.member.{n}.Id" in form:
            self.draining.append((arn, form[f"Targets.member.{n}.Id"][0],
                                  (form.get(f"Targets.member.{n}.Port") or [""])[0], until))
            n += 1

    def with_draining(self, body: bytes, answer: bytes) -> bytes:
        """moto's DescribeTargetHealth answer, with the targets still draining added."""
        from urllib.parse import parse_qs

        arn = (parse_qs(body.decode(errors="replace")).get("TargetGroupArn") or [""])[0]
        now = time.monotonic()
        members = "".join(
            f"<member><Target><Id>{i}</Id><Port>{p}</Port></Target><HealthCheckPort>traffic-port"
            f"</HealthCheckPort><TargetHealth><State>draining</State><Reason>Target.DeregistrationInProgress"
            f"</Reason></TargetHealth></member>"
            for group, i, p, until in self.draining if group == arn and until > now)
        if not members:
            return answer
        text = answer.decode()
        if "<TargetHealthDescriptions/>" in text:
            text = text.replace("<TargetHealthDescriptions/>", f"<TargetHealthDescriptions>{members}</TargetHealthDescriptions>")
        elif "</TargetHealthDescriptions>" in text:
            text = text.replace("</TargetHealthDescriptions>", f"{members}</TargetHealthDescriptions>")
        else:
            text = text.replace("<DescribeTargetHealthResult>",
                                f"<DescribeTargetHealthResult><TargetHealthDescriptions>{members}"
                                f"</TargetHealthDescriptions>", 1)
        return text.encode()

    def made(self, operation: str) -> list[tuple[float, str, bytes]]:
        return [c for c in list(self.calls) if c[1] == operation]

    def handler(self) -> type:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                operation = proxy.operation(self.headers, body)
                proxy.calls.append((time.monotonic(), operation, body))
                planned = proxy.plan.get(operation) or []
                mode = planned.pop(0) if planned else "pass"
                mode = proxy.mode if proxy.mode != "pass" else mode
                if mode not in ("pass", "hold"):
                    proxy.faults += 1
                if mode == "throttle" and self.headers.get("X-Amz-Target"):
                    return self._reply(400, b'{"__type": "ThrottlingException", "message": "Rate exceeded"}')
                if mode == "throttle":  # the query protocol's (ELB, ELBv2, Auto Scaling)
                    return self._reply(400, b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling"
                                            b"</Code><Message>Rate exceeded</Message></Error><RequestId>"
                                            b"warden-test</RequestId></ErrorResponse>", "text/xml")
                if mode == "garbled":  # an answer in no protocol the client speaks
                    return self._reply(400, b"<html><body>Bad Gateway</body></html>" if self.headers.get(
                        "X-Amz-Target") else b'{"__type": "ThrottlingException"}')
                if mode == "stall":
                    proxy.release.wait(30)
                    mode = "503"
                if mode == "hold":
                    proxy.holding.set()
                    proxy.unhold.wait(30)
                if mode == "503" and self.headers.get("X-Amz-Target"):
                    return self._reply(503, b'{"__type": "ServiceUnavailable", "message": "down"}')
                if mode == "503":  # the query protocol's error document
                    return self._reply(503, b"<ErrorResponse><Error><Type>Receiver</Type><Code>"
                                            b"ServiceUnavailable</Code><Message>down</Message></Error>"
                                            b"<RequestId>warden-test</RequestId></ErrorResponse>",
                                       "text/xml")
                if isinstance(mode, bytes):  # an answer the test wrote, as AWS gives it
                    return self._reply(200, mode, "text/xml")
                if mode == "empty-result":
                    return self._reply(200, (
                        f"<{operation}Response><{operation}Result/><ResponseMetadata><RequestId>"
                        f"warden-test</RequestId></ResponseMetadata></{operation}Response>").encode(),
                        "text/xml")
                request = urllib.request.Request(
                    proxy.upstream + self.path, data=body or None, method=self.command,
                    headers={k: v for k, v in self.headers.items()
                             if k.lower() not in ("host", "content-length")})
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        answer = response.read()
                        if proxy.drain_seconds and operation == "DeregisterTargets":
                            proxy.note_deregistered(body)
                        if proxy.draining and operation == "DescribeTargetHealth":
                            answer = proxy.with_draining(body, answer)
                        self._reply(response.status, answer, response.headers.get("Content-Type"))
                except urllib.error.HTTPError as error:
                    self._reply(error.code, error.read(), error.headers.get("Content-Type"))

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

            def _reply(self, status: int, body: bytes, kind: Any = "application/x-amz-json-1.1") -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", kind or "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def aws_proxy(moto: str) -> Any:
    """An :class:`AwsProxy` in front of the moto server; ``aws_proxy.url`` is its endpoint."""
    proxy = AwsProxy(moto)
    with serve_http(proxy.handler()) as url:
        proxy.url = url
        try:
            yield proxy
        finally:
            proxy.release.set()
            proxy.unhold.set()


@pytest.fixture
def cloud(aws):
    """An EC2 instance standing for this host, a classic ELB and a target group."""
    ec2 = aws.ec2
    image = ec2.describe_images()["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]
    name = f"elb-{RUN}-{time.monotonic_ns() % 10**6}"
    aws.elb.create_load_balancer(
        LoadBalancerName=name, AvailabilityZones=["us-east-1a"],
        Listeners=[{"Protocol": "HTTP", "LoadBalancerPort": 80, "InstancePort": 80}])
    group = aws.elbv2.create_target_group(Name=name, Protocol="HTTP", Port=80,
                                          VpcId=instance["VpcId"])["TargetGroups"][0]

    class Cloud:
        instance_id = instance["InstanceId"]
        elb_name = name
        target_group = group["TargetGroupArn"]
        clients = aws

        def in_elb(self) -> bool:
            reply = aws.elb.describe_load_balancers(LoadBalancerNames=[name])
            return any(i["InstanceId"] == self.instance_id
                       for i in reply["LoadBalancerDescriptions"][0]["Instances"])

        def in_group(self) -> set:
            reply = aws.elbv2.describe_target_health(TargetGroupArn=self.target_group)
            return {(d["Target"]["Id"], d["Target"]["Port"]) for d in reply["TargetHealthDescriptions"]}

    return Cloud()

