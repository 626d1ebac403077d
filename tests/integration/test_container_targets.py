"""Each container its own target (``targetMode: "container"``) through the moto server:
``instance`` groups get ``instanceId:hostPort``, ``ip`` groups the container's own
address; a target joins once its container is ready, leaves at its kill, and a sweep
removes this host's stale targets and nobody else's.

moto keeps one target per instance id in an ``instance`` group (a second port replaces
the first), so what Warden asks of an ``instance`` group is read from the calls it made
through the tests' AWS proxy; ``ip`` groups are read back from moto."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs

import pytest

from conftest import RUN, eventually, ip_of


def targets_in(calls) -> set:
    """The (Id, Port) targets named by RegisterTargets or DeregisterTargets calls."""
    found = set()
    for _, _, body in calls:
        form = parse_qs(body.decode())
        n = 1
        while f"Targets.member.{n}.Id" in form:
            found.add((form[f"Targets.member.{n}.Id"][0], int(form[f"Targets.member.{n}.Port"][0])))
            n += 1
    return found


@pytest.fixture
def groups(aws):
    """This host's EC2 instance, another instance, and an instance and an ip target group."""
    image = aws.ec2.describe_images()["Images"][0]["ImageId"]
    made = aws.ec2.run_instances(ImageId=image, MinCount=2, MaxCount=2)["Instances"]
    suffix = time.monotonic_ns() % 10**6

    def group(kind: str) -> str:
        return aws.elbv2.create_target_group(Name=f"{kind}-{RUN}-{suffix}", Protocol="HTTP", Port=80,
                                             VpcId=made[0]["VpcId"], TargetType=kind)["TargetGroups"][0]["TargetGroupArn"]

    class Groups:
        instance_id, other = made[0]["InstanceId"], made[1]["InstanceId"]
        instance, ip = group("instance"), group("ip")

        def held(self, arn: str) -> set:
            reply = aws.elbv2.describe_target_health(TargetGroupArn=arn)
            return {(d["Target"]["Id"], d["Target"]["Port"]) for d in reply["TargetHealthDescriptions"]}

    return Groups()


def shop(arn: str, **fields) -> dict:
    return {"name": "shop", "containerName": f"wt-{RUN}-shop", "port": 8080, "targetGroupArn": arn,
            "targetMode": "container", **fields}


def host_port(container) -> int:
    container.reload()
    return int(container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])


def test_containers_are_instance_targets_on_their_host_ports_and_leave_at_the_kill(
        groups, aws_proxy, redx, containers, warden):
    w = warden([shop(groups.instance, publishedPort=True)], instanceId=groups.instance_id)
    w.env["AWS_ENDPOINT_URL"] = aws_proxy.url
    w.start()
    one = containers.run("shop", ports={"8080/tcp": None})
    two = containers.run("shop", ports={"8080/tcp": None})
    wanted = {(groups.instance_id, host_port(one)), (groups.instance_id, host_port(two))}
    eventually(lambda: targets_in(aws_proxy.made("RegisterTargets")) >= wanted, 10,
               what="both containers registered on their host ports")
    assert f"+ targetgroup:{groups.instance} {groups.instance_id}:{host_port(one)}" in w.log()

    gone = (groups.instance_id, host_port(one))
    one.kill()
    eventually(lambda: gone in targets_in(aws_proxy.made("DeregisterTargets")), 10,
               what="the killed container deregistered")
    assert (groups.instance_id, host_port(two)) not in targets_in(aws_proxy.made("DeregisterTargets"))
    assert f"- targetgroup:{groups.instance} {gone[0]}:{gone[1]}" in w.log()


def test_ip_targets_are_the_containers_own_addresses_and_a_sweep_removes_only_this_hosts_stale_ones(
        groups, aws, central, central_server, redx, containers, warden):
    # Left by this host before a restart (recorded as its own), and another host's.
    stale, foreign = ("172.17.250.1", 8080), ("172.17.250.2", 8080)
    aws.elbv2.register_targets(TargetGroupArn=groups.ip, Targets=[{"Id": i, "Port": p} for i, p in (stale, foreign)])
    record = f"warden:targets:{groups.instance_id}"
    central.sadd(record, f"{groups.ip} {stale[0]}:{stale[1]}")
    warden([shop(groups.ip)], instanceId=groups.instance_id,
           serviceManagementRedisAddress=f"127.0.0.1:{central_server.port}").start()
    eventually(lambda: stale not in groups.held(groups.ip), 10, what="this host's stale target removed")
    assert foreign in groups.held(groups.ip), "another host's target was removed"

    one, two = containers.run("shop"), containers.run("shop")
    first, second = (ip_of(one), 8080), (ip_of(two), 8080)
    eventually(lambda: {first, second} <= groups.held(groups.ip), 10, what="both containers registered")
    assert central.smembers(record) == {f"{groups.ip} {i}:{p}" for i, p in (first, second)}
    w = warden([shop(groups.ip)], instanceId=groups.instance_id,
               serviceManagementRedisAddress=f"127.0.0.1:{central_server.port}")
    [service] = json.loads(w.command("status", "--json", check=True).stdout)["services"]
    assert [(t["target"], t["state"]) for t in service["loadBalancers"]] == [
        (f"targetgroup:{groups.ip} {i}:{p}", "healthy") for i, p in sorted((first, second))], \
        "status shows this host's targets, not another host's"
    one.kill()
    eventually(lambda: first not in groups.held(groups.ip), 10, what="the killed one deregistered")
    assert second in groups.held(groups.ip) and foreign in groups.held(groups.ip)
    assert central.smembers(record) == {f"{groups.ip} {second[0]}:{second[1]}"}


def test_a_container_that_never_answers_its_probe_is_never_a_target(groups, redx, containers, warden):
    warden([shop(groups.ip, readiness="tcp")], instanceId=groups.instance_id).start()
    silent = containers.run("shop", command="sleep 600")
    ready = containers.run("shop")
    eventually(lambda: (ip_of(ready), 8080) in groups.held(groups.ip), 10, what="the ready one registered")
    time.sleep(2)
    assert (ip_of(silent), 8080) not in groups.held(groups.ip)


def test_a_group_that_does_not_exist_and_an_unpublished_port_are_refused_once_and_the_rest_go_on(
        groups, aws_proxy, redx, containers, warden):
    missing = groups.instance[:-16] + "0" * 16
    w = warden([shop(groups.instance), shop(missing, name="gone", containerName=f"wt-{RUN}-gone")],
               instanceId=groups.instance_id, registrarSleepTimeSeconds=1)
    w.env["AWS_ENDPOINT_URL"] = aws_proxy.url
    w.start()
    containers.run("shop")  # publishes nothing: an instance group cannot reach it
    containers.run("gone")
    eventually(lambda: "is not a target of" in w.log() and "does not exist" in w.log(), 10,
               what="both refusals said")
    time.sleep(2.5)  # two more sweeps
    log = w.log()
    assert log.count("port 8080 is not published on the host") == 1, log
    assert log.count(f"target group {missing} does not exist") == 1, "refused at every sweep, not once"
    assert len(aws_proxy.made("DescribeTargetGroups")) >= 3, "the missing group is read again at each sweep"
    assert aws_proxy.made("RegisterTargets") == []


def test_a_host_without_redx_is_ready_and_sweeps_only_on_its_period(groups, redx, containers, warden):
    """Targets with no Redx at all (the ALB reaches the containers): the Redx watcher ran
    whatever the handlers, so /readyz said the Redx Redis was down for ever, and keys no
    handler writes were "lost" every 3 s, each time asking for a sweep."""
    from conftest import free_port, http_get

    metrics = free_port()
    w = warden([shop(groups.ip)], instanceId=groups.instance_id, handlers=["elb"],
               nginxRedisAddress=f"127.0.0.1:{free_port()}", metricsAddress=f"127.0.0.1:{metrics}").start()
    shop_container = containers.run("shop")
    eventually(lambda: (ip_of(shop_container), 8080) in groups.held(groups.ip), 10, what="registered")
    time.sleep(4)  # lost keys were said (and swept) every 3 s
    status, body = http_get(f"http://127.0.0.1:{metrics}/readyz")
    assert status == 200, body
    assert "Redx Redis" not in w.log(), [line for line in w.log().splitlines() if "Redx Redis" in line][:3]
    report = json.loads(w.command("status", "--json").stdout)
    assert not [e for e in report["errors"] if "Redx" in e], report["errors"]


def test_a_throttled_registration_is_retried_with_backoff_until_it_lands(groups, aws_proxy, redx, containers, warden):
    # botocore tries each call 3 times: the first round fails whole, the second passes.
    aws_proxy.plan["RegisterTargets"] = ["throttle"] * 4
    w = warden([shop(groups.ip)], instanceId=groups.instance_id)
    w.env["AWS_ENDPOINT_URL"] = aws_proxy.url
    w.start()
    one = containers.run("shop")
    eventually(lambda: (ip_of(one), 8080) in groups.held(groups.ip), 20, what="registered after the throttling")
    assert len(aws_proxy.made("RegisterTargets")) == 5
    assert w.log().count(f"target group call for {groups.ip} failed") == 1, "one failed round, said once"


def test_a_garbled_answer_does_not_end_the_load_balancer_worker(groups, aws_proxy, redx, containers, warden):
    """An answer botocore cannot parse (a proxy's error page) raised ResponseParserError,
    which is not a BotoCoreError: the handler's worker thread died of it, and nothing
    was registered or deregistered again until a restart."""
    aws_proxy.plan["RegisterTargets"] = ["garbled"]
    w = warden([shop(groups.ip)], instanceId=groups.instance_id)
    w.env["AWS_ENDPOINT_URL"] = aws_proxy.url
    w.start()
    one = containers.run("shop")
    eventually(lambda: (ip_of(one), 8080) in groups.held(groups.ip), 20, what="registered after the garbled answer")
    assert "Exception in thread" not in w.log()
