"""``warden status``: routes, containers, enrolment, leader and task counts, read from
the stores, with the daemon not running."""

from __future__ import annotations

import json

from conftest import RUN, eventually, ip_of


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
