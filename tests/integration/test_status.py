"""``warden status``: routes, containers, enrolment, leader and task counts, read from
the stores, with the daemon not running."""

from __future__ import annotations

import json

from conftest import RUN, ip_of


def test_status_shows_routes_leader_and_unknowns(redx, containers, warden, central, central_server):
    c = containers.run("web")
    w = warden([{"name": "web", "containerName": f"wt-{RUN}-web", "port": 8080,
                 "loadBalancerUrl": "web.example.com"}],
               serviceManagementRedisAddress=f"127.0.0.1:{central_server.port}")
    w.command("sweep", check=True)
    central.hset("service-manager", mapping={"id": "i-perl", "heartbeat": "20200101000000",
                                             "subnet": "us-east-1b"})
    result = w.command("status", "--json", check=True)
    report = json.loads(result.stdout)
    assert report["schema"] == 1
    [web] = report["services"]
    assert web["routes"] == [f"{ip_of(c)}:8080"]
    assert web["frontend"] == "web.example.com" and web["backend"] == "web"
    assert [x["name"] for x in web["containers"]] == [c.name]
    assert report["leader"]["id"] == "i-perl" and report["leader"]["legacy"] is True
    assert report["leader"]["state"] == "stale" and report["leader"]["epoch"] is None
    text = w.command("status", check=True).stdout
    assert "web.example.com" in text and f"{ip_of(c)}:8080" in text
    assert "leader: i-perl (stale)" in text


def test_status_reports_an_unreachable_store_without_failing(redx, warden):
    w = warden([{"name": "web", "port": 80}], serviceManagementRedisAddress="127.0.0.1:1")
    result = w.command("status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["leader"] is None
    assert any("central Redis" in e for e in report["errors"])


def test_status_check_exits_1_naming_why_this_host_is_unhealthy(redx, redx_server, containers, warden):
    c = containers.run("web")
    w = warden([{"name": "web", "containerName": f"wt-{RUN}-web", "port": 8080,
                 "loadBalancerUrl": "web.example.com"}])
    assert w.command("status", "--check").returncode == 1, "the container is not routed yet"
    w.command("sweep", check=True)
    healthy = w.command("status", "--check")
    assert healthy.returncode == 0, healthy.stderr
    redx.hset("backend:web", "10.255.0.9:8080", "0")  # a route no container of web has
    stale = w.command("status", "--check")
    assert stale.returncode == 1
    assert "unhealthy: web: route 10.255.0.9:8080 points at no running, routable container" in stale.stderr
    redx.hdel("backend:web", "10.255.0.9:8080")
    c.pause()
    paused = w.command("status", "--check")  # no daemon here to unroute it
    assert paused.returncode == 1
    assert f"unhealthy: web: route {ip_of(c)}:8080 points at no running, routable container" in paused.stderr
    c.unpause()
    redx_server.stop()
    try:
        down = w.command("status", "--check")
        assert down.returncode == 1
        assert "unhealthy: Redx Redis" in down.stderr
    finally:
        redx_server.start()
