"""Load-balancer enrolment through the moto server: classic ELBs and ELBv2 target
groups, per load balancer, never delaying a route."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from conftest import RUN, eventually, ip_of


def web(cloud, **fields) -> dict:
    base = {"name": "web", "containerName": f"wt-{RUN}-web", "port": 8080,
            "loadBalancerUrl": "web.example.com", "loadBalancerName": cloud.elb_name,
            "targetGroupArn": cloud.target_group, "targetPort": 8080}
    base.update(fields)
    return base


def test_enrolled_with_the_first_container_and_deregistered_after_the_last(cloud, redx, containers, warden):
    w = warden([web(cloud)], instanceId=cloud.instance_id).start()
    assert not cloud.in_elb() and cloud.in_group() == set()
    first = containers.run("web")
    eventually(cloud.in_elb, 5, what="enrolled in the classic ELB")
    eventually(lambda: cloud.in_group() == {(cloud.instance_id, 8080)}, 5, what="in the target group")
    second = containers.run("web")
    eventually(lambda: f"{ip_of(second)}:8080" in redx.hgetall("backend:web"), 5, what="second routed")
    first_address = f"{ip_of(first)}:8080"
    first.remove(force=True)
    eventually(lambda: first_address not in redx.hgetall("backend:web"), 5, what="first unrouted")
    assert cloud.in_elb(), "still enrolled while one container is routed"
    second.remove(force=True)
    eventually(lambda: not cloud.in_elb(), 5, what="deregistered from the classic ELB")
    eventually(lambda: cloud.in_group() == set(), 5, what="deregistered from the target group")
    log = w.log()
    assert f"+ elb:{cloud.elb_name} {cloud.instance_id}" in log
    assert f"- targetgroup:{cloud.target_group} {cloud.instance_id}:8080" in log


def test_enrolment_is_per_load_balancer_across_services(cloud, redx, containers, warden):
    services = [web(cloud, targetGroupArn=""),
                web(cloud, name="api", containerName=f"wt-{RUN}-api", targetGroupArn="",
                    loadBalancerUrl="api.example.com")]
    warden(services, instanceId=cloud.instance_id).start()
    a = containers.run("web")
    b = containers.run("api")
    eventually(cloud.in_elb, 5, what="enrolled")
    a.remove(force=True)
    time.sleep(0.5)
    assert cloud.in_elb(), "api still has a route here"
    b.remove(force=True)
    eventually(lambda: not cloud.in_elb(), 5, what="deregistered after the last service's route")


def test_sweep_corrects_enrolment_that_drifted(cloud, redx, containers, warden):
    # Enrolled in AWS with nothing running here: the start-up sweep deregisters.
    cloud.clients.elb.register_instances_with_load_balancer(
        LoadBalancerName=cloud.elb_name, Instances=[{"InstanceId": cloud.instance_id}])
    w = warden([web(cloud, targetGroupArn="")], instanceId=cloud.instance_id)
    result = w.command("sweep", "--dry-run", check=True)
    assert f"- elb:{cloud.elb_name} {cloud.instance_id}" in result.stdout.splitlines()
    assert cloud.in_elb(), "a dry run changes nothing"
    w.start()
    eventually(lambda: not cloud.in_elb(), 5, what="stale enrolment removed")


def test_missing_instance_id_is_exit_2_naming_it(cloud, redx, warden):
    w = warden([web(cloud)])
    result = w.command("sweep")
    assert result.returncode == 2
    assert "instanceId" in result.stderr and "WARDEN_INSTANCE_ID" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def stalling_endpoint():
    """An 'AWS endpoint' that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(50)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=serve, name="stalling-endpoint")
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", held
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_stalled_aws_endpoint_never_delays_a_route(redx, containers, warden, stalling_endpoint):
    url, held = stalling_endpoint
    w = warden([{"name": "web", "containerName": f"wt-{RUN}-web", "port": 8080,
                 "loadBalancerUrl": "web.example.com", "loadBalancerName": "some-elb"}],
               instanceId="i-0123456789abcdef0")
    w.env["AWS_ENDPOINT_URL"] = url
    w.start()
    for _ in range(3):
        c = containers.run("web")
        started = time.monotonic()
        eventually(lambda: f"{ip_of(c)}:8080" in redx.hgetall("backend:web"), 2, what="route")
        assert time.monotonic() - started < 2
    eventually(lambda: held, 5, what="the ELB handler calling the stalled endpoint")


def test_a_service_removed_while_warden_was_down_leaves_its_load_balancers(cloud, redx, containers, warden):
    """Enrolment was undone only for services retired while Warden ran: one removed
    while it was down kept the host in its load balancer for ever. Warden's record in
    the central Redis says where it enrolled the host."""
    api = {"name": "api", "containerName": f"wt-{RUN}-api", "port": 8080, "loadBalancerUrl": "api.example.com"}
    w = warden([web(cloud), api], instanceId=cloud.instance_id).start()
    one, two = containers.run("web"), containers.run("api")
    eventually(cloud.in_elb, 5, what="enrolled in the classic ELB")
    eventually(lambda: cloud.in_group() == {(cloud.instance_id, 8080)}, 5, what="in the target group")
    w.stop()
    w.write_services("services.json", [api])
    w.start()
    eventually(lambda: not cloud.in_elb(), 10, what="out of the retired service's classic ELB")
    eventually(lambda: cloud.in_group() == set(), 10, what="out of its target group")
    assert f"- elb:{cloud.elb_name} {cloud.instance_id}" in w.log()
    assert ip_of(one) and ip_of(two)
