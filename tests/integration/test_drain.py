"""Draining a host, as it really happens: a spot warning or a terminate lifecycle action
on the AWS events queue (EventBridge into SQS on moto), the leader asking the host it
names, and that host leaving its load balancers and completing the lifecycle action,
whether it runs ``warden run`` or the Registrar and the Manager as two processes."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis as redis_lib

from conftest import RUN, eventually
from warden.control import encode
from support.aws import terminating


def leader(central) -> str:
    return central.hget("service-manager", "id") or ""


@pytest.fixture
def load_balancer(aws):
    """A classic ELB on moto and an EC2 instance (this host) that can be enrolled."""
    image = aws.ec2.describe_images()["Images"][0]["ImageId"]
    instance = aws.ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    name = f"elb-{uuid.uuid4().hex[:6]}"
    aws.elb.create_load_balancer(LoadBalancerName=name, AvailabilityZones=["us-east-1a"],
                                 Listeners=[{"Protocol": "HTTP", "LoadBalancerPort": 80, "InstancePort": 80}])

    class LoadBalancer:
        def enrolled(self) -> bool:
            found = aws.elb.describe_load_balancers(LoadBalancerNames=[name])["LoadBalancerDescriptions"][0]
            return any(i["InstanceId"] == instance for i in found["Instances"])

    lb = LoadBalancer()
    lb.name, lb.instance = name, instance
    return lb


def host_settings(central_server, **extra) -> dict:
    return dict(serviceManagementRedisAddress=f"127.0.0.1:{central_server.port}", zoneCheck="none",
                leaseSeconds=2, guardTimeSeconds=0.5, heartbeatIntervalSeconds=0.5, **extra)


@pytest.mark.parametrize("deployment", ["run", "registrar and manager apart"])
def test_a_spot_warning_deregisters_the_host_it_names(deployment, events, load_balancer, central,
                                                      central_server, redx, containers, warden):
    """Defects 10 and 18: from the spot warning to the deregistration, through `warden
    run`, and through `warden registrar` + `warden manager` as two processes (where the
    drain used to reach only the Manager, which has no ELB handler)."""
    services = [{"name": "web", "containerName": f"wt-{RUN}-web", "port": 8080,
                 "loadBalancerUrl": "web.example.com", "loadBalancerName": load_balancer.name}]
    settings = host_settings(central_server, handlers=["redx", "elb"], awsEventsQueueUrl=events.queue_url,
                             labelFrontends=["shop.example.com"], labelLoadBalancers=[load_balancer.name])
    commands = ["run"] if deployment == "run" else ["registrar", "manager"]
    processes = []
    for command in commands:
        w = warden(services, **settings)
        w.env.update(WARDEN_INSTANCE_ID=load_balancer.instance, WARDEN_REGION="us-east-1")
        w.start(command)
        processes.append(w)
    containers.run("web")
    eventually(load_balancer.enrolled, 10, what="enrolled with its first container")
    eventually(lambda: leader(central) == load_balancer.instance, 10, what="this host leads")
    events.emit("EC2 Spot Instance Interruption Warning", "aws.ec2",
                {"instance-id": load_balancer.instance, "instance-action": "terminate"})
    eventually(lambda: not load_balancer.enrolled(), 20, what="deregistered by the drain")
    registrar = processes[0]
    assert f"warden:drain:{load_balancer.instance}: draining (EC2 Spot Instance Interruption Warning)" \
        in registrar.log()
    eventually(lambda: leader(central) == "", 10, what="leadership handed back")
    assert central.get(f"warden:draining:{load_balancer.instance}") == "EC2 Spot Instance Interruption Warning"


def test_a_drain_takes_effect_only_when_its_key_backs_it(central, managers, central_server):
    """Defect 12: a drain was acted on from the message alone; like a kill, only the
    key counts, and a lost message is made up for by the next check of the key (every
    managerSleepTimeSeconds, 2 s here, and at once when the subscription comes back)."""
    a = managers("i-a", managerSleepTimeSeconds=2)
    eventually(lambda: leader(central) == "i-a", 10, what="i-a leads")
    managers("i-b")
    pub = redis_lib.Redis(port=central_server.port)
    pub.publish("warden:drain", encode("drain", "i-a", "", 0, None))
    eventually(lambda: "drain message for this host: checking warden:drain:i-a" in a.log(), 5,
               what="the message woke the watcher")
    time.sleep(2.5)  # another check of the key
    assert leader(central) == "i-a" and "draining" not in a.log()
    # The key alone, its message lost: the next check acts on it.
    central.set("warden:drain:i-a", json.dumps({"reason": "spot, message lost", "lifecycle": None}))
    eventually(lambda: leader(central) == "i-b", 10, what="i-a drained and handed over")
    assert "draining (spot, message lost)" in a.log()
    pub.close()


def test_a_drain_is_recorded_over_the_connections_the_manager_holds(central, managers, central_server):
    """A manager holds two connections to the central Redis, whatever happens: its drain
    is recorded for `warden status` over its command connection, not a new one."""
    a = managers("i-a", managerSleepTimeSeconds=1)
    eventually(lambda: leader(central) == "i-a", 10, what="i-a leads")
    admin = redis_lib.Redis(port=central_server.port, decode_responses=True)
    eventually(lambda: {"warden-i-a", "warden-sub-i-a"} <= {c["name"] for c in admin.client_list()}, 5,
               what="i-a's two connections")
    received = admin.info("stats")["total_connections_received"]
    central.set("warden:drain:i-a", json.dumps({"reason": "spot", "lifecycle": None}))
    eventually(lambda: central.get("warden:draining:i-a") == "spot", 5, what="the drain recorded")
    eventually(lambda: "draining (spot)" in a.log(), 5, what="i-a drains")
    assert admin.info("stats")["total_connections_received"] == received, "no new connection"
    admin.close()


def test_a_drain_lost_while_resubscribing_is_found_at_once(central, managers, central_server):
    """A drain message published while a host's subscription is down is lost: the host
    reads its drain key as soon as it subscribes again, not a safety-net period later."""
    a = managers("i-a", managerSleepTimeSeconds=600)
    eventually(lambda: leader(central) == "i-a", 10, what="i-a leads")
    managers("i-b")
    admin = redis_lib.Redis(port=central_server.port, decode_responses=True)
    central.set("warden:drain:i-a", json.dumps({"reason": "spot, while away", "lifecycle": None}))
    subscription = [c for c in admin.client_list() if c["name"] == "warden-sub-i-a"]
    assert len(subscription) == 1, "one pub/sub connection"
    admin.client_kill_filter(_id=subscription[0]["id"])
    eventually(lambda: leader(central) == "i-b", 10, what="i-a drained and handed over")
    assert "draining (spot, while away)" in a.log()
    admin.close()


@pytest.mark.parametrize("command, handlers", [("run", ["redx"]), ("run", ["redx", "elb"]),
                                               ("manager", ["redx", "elb", "ecs"])])
def test_the_lifecycle_action_is_completed_without_targets_and_retried_with_its_token(
        command, handlers, events, aws_proxy, central, central_server, redx, warden):
    """Defect 11: the lifecycle action was completed only by the ELB handler's worker,
    and only when it had targets: with none, or with the elb handler off, the host
    stayed in Terminating:Wait. A failing call is retried, with its token, until it
    succeeds. (moto lacks CompleteLifecycleAction: the proxy answers it as AWS does.)"""
    aws_proxy.plan["CompleteLifecycleAction"] = ["503", "503", "empty-result"]
    w = warden([{"name": "web", "port": 8080, "loadBalancerUrl": "web.example.com"}],
               **host_settings(central_server, handlers=handlers, awsEventsQueueUrl=events.queue_url))
    w.env.update(WARDEN_INSTANCE_ID="i-host", WARDEN_REGION="us-east-1", AWS_ENDPOINT_URL=aws_proxy.url)
    w.start(command, ready="manager started")
    eventually(lambda: leader(central) == "i-host", 10, what="this host leads")
    token = str(uuid.uuid4())
    aws_proxy.plan["DescribeAutoScalingInstances"] = [terminating("i-host")] * 3
    events.emit("EC2 Instance-terminate Lifecycle Action", "aws.autoscaling",
                {"EC2InstanceId": "i-host", "LifecycleHookName": "drain-hook",
                 "AutoScalingGroupName": "web-asg", "LifecycleActionToken": token,
                 "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING"})
    eventually(lambda: "drained: lifecycle action drain-hook completed" in w.log(), 20,
               what="the lifecycle action completed")
    calls = aws_proxy.made("CompleteLifecycleAction")
    assert len(calls) == 3
    assert all(f"LifecycleActionToken={token}".encode() in body for _, _, body in calls)
    assert w.log().count("cannot complete lifecycle action drain-hook") == 2


def test_a_drain_noticed_while_a_claim_is_in_flight_leads_nothing(central, central_server, tmp_path):
    """A drain that arrives on another thread while this host's claim script runs finds
    a follower and steps nothing down; the claim then succeeds. The draining host must
    hand the record back before it acts, never lead."""
    from conftest import InProcessManager
    from warden import signals
    from warden.manager.machine import ElectionCalled, World

    host = InProcessManager(tmp_path, central_server, "i-d")
    manager = host.manager
    machine, world = manager.machine, World(subscribed=True, active=lambda zone: True)
    manager.receivers.connect()
    try:
        machine.apply(ElectionCalled(time.monotonic()))
        manager._carry_out(machine.decide(time.monotonic(), world))  # stands; the claim is due at the close
        assert machine.candidate_since is not None
        time.sleep(machine.claim_after + 0.05)
        claim = manager.store.claim

        def drain_arrives_during_the_claim(*args, **kw):
            signals.send(signals.host_draining, None, reason="EC2 Spot Instance Interruption Warning",
                         lifecycle=None)
            return claim(*args, **kw)

        manager.store.claim = drain_arrives_during_the_claim
        gained = []
        with signals.leadership_gained.connected_to(lambda sender, **kw: gained.append(kw)):
            manager._carry_out(machine.decide(time.monotonic(), world))  # claims
        assert gained == [], "a draining host gained leadership"
        assert manager.role == "follower" and not manager.is_leader
        assert leader(central) == "", "the draining host kept the record"
    finally:
        host.close()


def test_two_processes_complete_the_lifecycle_action_only_after_leaving_label_declared_load_balancers(
        events, load_balancer, aws_proxy, central, central_server, redx, containers, warden):
    """``warden registrar`` and ``warden manager`` apart, the load balancer named only by
    a container's label (no file names one at start): the Manager's process decided at
    start that nobody on the host enrols, and completed the lifecycle action at once,
    before the Registrar's process had left the load balancer. It now waits until the
    process that enrols really holds nothing."""
    aws_proxy.plan["CompleteLifecycleAction"] = ["empty-result"] * 4
    aws_proxy.plan["DeregisterInstancesFromLoadBalancer"] = ["hold"]
    settings = host_settings(central_server, handlers=["redx", "elb"], awsEventsQueueUrl=events.queue_url,
                             labelFrontends=["shop.example.com"], labelLoadBalancers=[load_balancer.name])
    processes = []
    for command in ("registrar", "manager"):
        w = warden([], **settings)
        w.env.update(WARDEN_INSTANCE_ID=load_balancer.instance, WARDEN_REGION="us-east-1",
                     AWS_ENDPOINT_URL=aws_proxy.url)
        w.start(command, ready="manager started" if command == "manager" else "")
        processes.append(w)
    containers.run("shop", labels={"warden.service": f"shop-{RUN}", "warden.frontend": "shop.example.com",
                                   "warden.port": "8080", "warden.load-balancer": load_balancer.name})
    eventually(load_balancer.enrolled, 10, what="enrolled by the label")
    eventually(lambda: leader(central) == load_balancer.instance, 10, what="this host leads")
    aws_proxy.plan["DescribeAutoScalingInstances"] = [terminating(load_balancer.instance)] * 3
    events.emit("EC2 Instance-terminate Lifecycle Action", "aws.autoscaling",
                {"EC2InstanceId": load_balancer.instance, "LifecycleHookName": "drain-hook",
                 "AutoScalingGroupName": "web-asg", "LifecycleActionToken": str(uuid.uuid4()),
                 "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING"})
    # The deregistration takes its time (held at the proxy until the test lets it go).
    eventually(aws_proxy.holding.is_set, 20, what="the deregistration under way")
    time.sleep(2)
    assert aws_proxy.made("CompleteLifecycleAction") == [], \
        "the lifecycle action was completed while the host was still in its load balancer"
    left = time.monotonic()
    aws_proxy.unhold.set()
    eventually(lambda: not load_balancer.enrolled(), 10, what="deregistered")
    eventually(lambda: aws_proxy.made("CompleteLifecycleAction"), 20, what="the lifecycle action completed")
    assert min(at for at, _, _ in aws_proxy.made("CompleteLifecycleAction")) > left


def lifecycle_event(events, instance_id: str, aws_proxy) -> None:
    # Auto Scaling has the instance in Terminating:Wait, which Warden checks first.
    aws_proxy.plan["DescribeAutoScalingInstances"] = [terminating(instance_id)] * 3
    events.emit("EC2 Instance-terminate Lifecycle Action", "aws.autoscaling",
                {"EC2InstanceId": instance_id, "LifecycleHookName": "drain-hook",
                 "AutoScalingGroupName": "web-asg", "LifecycleActionToken": str(uuid.uuid4()),
                 "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING"})


def test_the_lifecycle_action_waits_until_the_target_left_draining_with_heartbeats_meanwhile(
        events, cloud, aws_proxy, central, central_server, redx, containers, warden):
    """The lifecycle action was completed as soon as DeregisterTargets returned, while
    the load balancer still drained connections to the host (for the group's
    deregistration delay): the instance could terminate under live connections. The
    proxy reports the target ``draining`` for 12 s after its deregistration (the first
    heartbeat comes 10 s after the drain began)."""
    aws_proxy.drain_seconds = 12
    aws_proxy.plan["CompleteLifecycleAction"] = ["empty-result"]
    aws_proxy.plan["RecordLifecycleActionHeartbeat"] = ["empty-result"] * 5
    services = [{"name": "web", "containerName": f"wt-{RUN}-web", "port": 8080, "loadBalancerUrl": "web.example.com",
                 "targetGroupArn": cloud.target_group, "targetPort": 8080}]
    w = warden(services, **host_settings(central_server, handlers=["redx", "elb"], awsEventsQueueUrl=events.queue_url))
    w.env.update(WARDEN_INSTANCE_ID=cloud.instance_id, WARDEN_REGION="us-east-1", AWS_ENDPOINT_URL=aws_proxy.url)
    w.start("run")
    containers.run("web")
    eventually(lambda: cloud.in_group() == {(cloud.instance_id, 8080)}, 10, what="in the target group")
    eventually(lambda: leader(central) == cloud.instance_id, 10, what="this host leads")
    lifecycle_event(events, cloud.instance_id, aws_proxy)
    eventually(lambda: aws_proxy.made("DeregisterTargets"), 20, what="deregistered")
    left = aws_proxy.made("DeregisterTargets")[0][0]
    eventually(lambda: aws_proxy.made("CompleteLifecycleAction"), 40, what="the lifecycle action completed")
    completed = aws_proxy.made("CompleteLifecycleAction")[0][0]
    assert completed - left >= 11.5, f"completed {completed - left:.1f}s after the deregistration, while draining"
    beats = [at for at, _, _ in aws_proxy.made("RecordLifecycleActionHeartbeat")]
    assert beats and all(left < at < completed for at in beats), "no heartbeat while the target drained"
    assert "drain: waiting for 1 target(s) to leave draining" in w.log()


def test_a_drain_waits_no_longer_than_the_groups_deregistration_delay(
        events, aws, aws_proxy, central, central_server, redx, containers, warden):
    """Container targets of an ip group that never leave ``draining`` (as the proxy
    tells it): the host goes on after the group's deregistration delay (3 s here) and
    a margin, and says so."""
    from conftest import ip_of

    image = aws.ec2.describe_images()["Images"][0]["ImageId"]
    instance = aws.ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]
    group = aws.elbv2.create_target_group(Name=f"ip-{uuid.uuid4().hex[:8]}", Protocol="HTTP", Port=80,
                                          VpcId=instance["VpcId"], TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
    aws.elbv2.modify_target_group_attributes(TargetGroupArn=group, Attributes=[
        {"Key": "deregistration_delay.timeout_seconds", "Value": "3"}])
    aws_proxy.drain_seconds = 600
    aws_proxy.plan["CompleteLifecycleAction"] = ["empty-result"]
    services = [{"name": "shop", "containerName": f"wt-{RUN}-shop", "port": 8080, "targetGroupArn": group,
                 "targetMode": "container"}]
    w = warden(services, **host_settings(central_server, handlers=["elb"], awsEventsQueueUrl=events.queue_url))
    w.env.update(WARDEN_INSTANCE_ID=instance["InstanceId"], WARDEN_REGION="us-east-1", AWS_ENDPOINT_URL=aws_proxy.url)
    w.start("run")
    shop = containers.run("shop")
    target = f"{group} {ip_of(shop)}:8080"
    eventually(lambda: f"+ targetgroup:{target}" in w.log(), 10, what="the container registered")
    eventually(lambda: leader(central) == instance["InstanceId"], 10, what="this host leads")
    lifecycle_event(events, instance["InstanceId"], aws_proxy)
    eventually(lambda: f"- targetgroup:{target}" in w.log(), 20, what="deregistered")
    left = aws_proxy.made("DeregisterTargets")[0][0]
    eventually(lambda: aws_proxy.made("CompleteLifecycleAction"), 30, what="the lifecycle action completed")
    waited = aws_proxy.made("CompleteLifecycleAction")[0][0] - left
    assert 3 <= waited < 15, f"completed {waited:.1f}s after the deregistration"
    assert "drain: 1 target(s) still draining after" in w.log()


@pytest.mark.parametrize("opted_in", [True, False])
def test_a_rebalance_recommendation_leaves_the_load_balancers_for_a_while_when_opted_in(
        opted_in, events, load_balancer, central, central_server, redx, containers, warden):
    """``rebalanceDrain``: the host leaves its load balancers at once, keeps its routes
    and its leadership, and joins again ``rebalanceDrainSeconds`` later when no
    interruption came. Without it, the recommendation changes nothing."""
    services = [{"name": "web", "containerName": f"wt-{RUN}-web", "port": 8080,
                 "loadBalancerUrl": "web.example.com", "loadBalancerName": load_balancer.name}]
    w = warden(services, **host_settings(central_server, handlers=["redx", "elb"], awsEventsQueueUrl=events.queue_url,
                                         rebalanceDrain=opted_in, rebalanceDrainSeconds=4))
    w.env.update(WARDEN_INSTANCE_ID=load_balancer.instance, WARDEN_REGION="us-east-1")
    w.start("run")
    containers.run("web")
    eventually(load_balancer.enrolled, 10, what="enrolled with its first container")
    eventually(lambda: leader(central) == load_balancer.instance, 10, what="this host leads")
    epoch = central.hget("service-manager", "epoch")
    events.emit("EC2 Instance Rebalance Recommendation", "aws.ec2", {"instance-id": load_balancer.instance})
    eventually(lambda: central.get(f"warden:rebalance:{load_balancer.instance}"), 10, what="relayed by the leader")
    if not opted_in:
        time.sleep(3)
        assert load_balancer.enrolled(), "left the load balancer without rebalanceDrain"
        return
    eventually(lambda: not load_balancer.enrolled(), 10, what="left the load balancer early")
    left = time.monotonic()
    assert redx.hlen("backend:web") == 1, "the routes stay"
    assert central.hget("service-manager", "epoch") == epoch, "the leadership stays"
    eventually(load_balancer.enrolled, 15, what="joined again when no interruption came")
    assert time.monotonic() - left >= 3, "joined again before rebalanceDrainSeconds"
    assert "joining the load balancers again" in w.log()


def test_a_classic_elb_is_left_for_its_connection_draining_timeout_before_the_lifecycle_action(
        events, load_balancer, aws, aws_proxy, central, central_server, redx, containers, warden):
    """A classic ELB says nothing of draining: the host waits its connection-draining
    timeout (4 s here) after deregistering, then completes the lifecycle action."""
    aws.elb.modify_load_balancer_attributes(LoadBalancerName=load_balancer.name, LoadBalancerAttributes={
        "ConnectionDraining": {"Enabled": True, "Timeout": 4}})
    aws_proxy.plan["CompleteLifecycleAction"] = ["empty-result"]
    aws_proxy.plan["RecordLifecycleActionHeartbeat"] = ["empty-result"] * 5
    services = [{"name": "web", "containerName": f"wt-{RUN}-web", "port": 8080,
                 "loadBalancerUrl": "web.example.com", "loadBalancerName": load_balancer.name}]
    w = warden(services, **host_settings(central_server, handlers=["redx", "elb"], awsEventsQueueUrl=events.queue_url))
    w.env.update(WARDEN_INSTANCE_ID=load_balancer.instance, WARDEN_REGION="us-east-1", AWS_ENDPOINT_URL=aws_proxy.url)
    w.start("run")
    containers.run("web")
    eventually(load_balancer.enrolled, 10, what="enrolled")
    eventually(lambda: leader(central) == load_balancer.instance, 10, what="this host leads")
    lifecycle_event(events, load_balancer.instance, aws_proxy)
    eventually(lambda: aws_proxy.made("DeregisterInstancesFromLoadBalancer"), 20, what="deregistered")
    left = aws_proxy.made("DeregisterInstancesFromLoadBalancer")[0][0]
    eventually(lambda: aws_proxy.made("CompleteLifecycleAction"), 30, what="the lifecycle action completed")
    waited = aws_proxy.made("CompleteLifecycleAction")[0][0] - left
    assert 3.5 <= waited < 12, f"completed {waited:.1f}s after the deregistration"
