"""``warden run``: the Registrar and the Manager in one process, with /metrics and
/healthz, routes, leadership and scaling together, and one clean shutdown."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import urllib.request

import warden as warden_package
from conftest import ROOT, RUN, eventually, free_port, ip_of
from conftest import http_get as get


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
    status, body = get(f"http://127.0.0.1:{port}/readyz")
    assert status == 200, body
    assert json.loads(body) == {"ready": True, "dependencies": {"docker": True, "redx-redis": True,
                                                                "central-redis": True}}
    eventually(lambda: get(f"http://127.0.0.1:{port}/livez")[0] == 200, 5, what="live")
    live = json.loads(get(f"http://127.0.0.1:{port}/livez")[1])
    assert live["live"] is True and all(live["threads"].values()) and live["sweep"]["limitSeconds"] == 180
    status, metrics = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    assert shutil.which("promtool"), "promtool is missing: run scripts/test, which installs Debian's prometheus"
    lint = subprocess.run(["promtool", "check", "metrics"], input=metrics, capture_output=True, text=True,
                          timeout=30)
    print(f"\npromtool check metrics on a live /metrics: exit {lint.returncode}\n{lint.stdout}{lint.stderr}")
    assert lint.returncode == 0 and lint.stdout + lint.stderr == "", lint.stdout + lint.stderr
    assert f'warden_build_info{{version="{warden_package.__version__}"}} 1.0' in metrics
    assert "process_resident_memory_bytes" in metrics and "python_info" in metrics
    assert 'warden_reconnects_total{subscriber="docker-events"} 0.0' in metrics
    assert 'warden_changes_total{op="add",store="backend"} 1.0' in metrics
    # Every metric the shipped alert rules and dashboard use is served.
    shipped = ((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()
               + (ROOT / "deploy" / "grafana" / "warden-dashboard.json").read_text())
    for name in sorted(set(re.findall(r"\b(warden_[a-z_]+?)(?:_bucket)?\{", shipped))):
        assert f"# TYPE {name} " in metrics or f"# TYPE {name.removesuffix('_total')} " in metrics, name
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


def test_readyz_names_the_dependency_that_is_down_while_livez_stays_up(redx, redx_server, warden,
                                                                      central_server):
    """/healthz used to answer 503 on every host while a shared Redis was down: as a
    container health check it would restart a fleet for an outage Warden rides out."""
    port = free_port()
    warden([{"name": "web", "port": 80, "loadBalancerUrl": "web.example.com"}],
           metricsAddress=f"127.0.0.1:{port}", handlers=["redx"]).start()
    base = f"http://127.0.0.1:{port}"
    eventually(lambda: get(base + "/readyz")[0] == 200, 5, what="ready")
    redx_server.stop()
    try:
        status, body = eventually(lambda: (lambda r: r if r[0] == 503 else None)(get(base + "/readyz")),
                                  10, what="not ready")
        assert json.loads(body) == {"ready": False, "dependencies": {"docker": True, "redx-redis": False}}
        for path in ("/livez", "/healthz"):
            status, body = get(base + path)
            assert status == 200 and json.loads(body)["live"] is True, body
    finally:
        redx_server.start()
    eventually(lambda: get(base + "/readyz")[0] == 200, 10, what="ready again")
    for path in ("/livez", "/readyz", "/healthz", "/metrics"):
        request = urllib.request.Request(base + path, method="HEAD")
        with urllib.request.urlopen(request, timeout=2) as response:
            assert response.status == 200 and response.read() == b""


def test_livez_fails_once_sweeps_stop():
    """A Registrar whose sweeps stopped does nothing more: restart it."""
    from warden import signals
    from warden.runtime.telemetry import Telemetry

    telemetry = Telemetry(f"127.0.0.1:{free_port()}")
    telemetry.watch_sweeps(0.2)
    telemetry.start()
    base = f"http://127.0.0.1:{telemetry.address[1]}"
    try:
        assert get(base + "/livez")[0] == 200
        time.sleep(0.7)
        status, body = get(base + "/livez")
        assert status == 503, body
        assert json.loads(body)["sweep"]["ageSeconds"] > json.loads(body)["sweep"]["limitSeconds"]
        signals.send(signals.sweep_done, "test", reason="periodic", changes=[], seconds=0.01)
        status, body = get(base + "/livez")
        assert status == 200 and json.loads(body)["sweep"]["ageSeconds"] < 0.6, body
        assert "warden_last_sweep_timestamp_seconds" in get(base + "/metrics")[1]
    finally:
        telemetry.stop()
