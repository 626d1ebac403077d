"""``warden run``: the Registrar and the Manager in one process, with /metrics and
/healthz, routes, leadership and scaling together, and one clean shutdown."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request

from conftest import RUN, eventually, free_port, ip_of


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_run_routes_leads_and_serves_metrics(redx, containers, warden, central, central_server):
    port = free_port()
    w = warden([{"name": "web", "containerName": f"wt-{RUN}-web", "port": 8080,
                 "loadBalancerUrl": "web.example.com"}],
               serviceManagementRedisAddress=f"127.0.0.1:{central_server.port}",
               zoneCheck="none", leaseSeconds=2, guardTimeSeconds=0.5, heartbeatIntervalSeconds=0.5,
               metricsAddress=f"127.0.0.1:{port}", handlers=["redx"])
    w.env["WARDEN_INSTANCE_ID"] = "i-run"
    w.start("run")
    c = containers.run("web")
    eventually(lambda: f"{ip_of(c)}:8080" in redx.hgetall("backend:web"), 5, what="routed")
    eventually(lambda: central.hget("service-manager", "id") == "i-run", 10, what="leading")
    status, body = get(f"http://127.0.0.1:{port}/healthz")
    assert status == 200, body
    assert json.loads(body)["subscribers"] == {"docker-events": True, "redx-redis": True,
                                               "control-channels": True}
    status, metrics = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    assert "warden_event_route_latency_seconds_bucket" in metrics
    assert 'warden_docker_events_total{action="start"}' in metrics
    assert "warden_leader 1.0" in metrics
    [sweeps] = [line.split()[1] for line in metrics.splitlines() if line.startswith("warden_sweeps_total ")]
    assert float(sweeps) >= 1
    epoch = central.get("warden:epoch")
    [value] = [line.split()[1] for line in metrics.splitlines() if line.startswith("warden_epoch ")]
    assert float(value) == float(epoch)
    w.process.send_signal(signal.SIGTERM)
    assert w.process.wait(30) == 0
    w.process = None
    w.log_file.close()
    assert central.hget("service-manager", "id") is None, "leadership handed back"
    assert "registrar stopped" in w.log() and "manager stopped" in w.log()


def test_healthz_says_which_subscriber_is_down(redx, redx_server, warden, central_server):
    port = free_port()
    w = warden([{"name": "web", "port": 80, "loadBalancerUrl": "web.example.com"}],
               metricsAddress=f"127.0.0.1:{port}", handlers=["redx"]).start()
    eventually(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 5, what="healthy")
    redx_server.stop()
    try:
        status, body = eventually(lambda: (lambda r: r if r[0] == 503 else None)(
            get(f"http://127.0.0.1:{port}/healthz")), 10, what="unhealthy")
        assert json.loads(body)["subscribers"]["redx-redis"] is False
    finally:
        redx_server.start()
    eventually(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 10, what="healthy again")
