"""Container targets (``targetMode: "container"``): Docker's start event to the
container registered in its target group, and how many RegisterTargets calls a burst
costs.

Run by hand (after scripts/setup.sh): .venv/bin/python scripts/bench/target_latency.py
It starts a redis-server and the moto server of its own, a timestamping HTTP proxy in
front of moto (the time RegisterTargets was answered, for each target it named), and
`warden registrar` with one service whose containers are targets of an ``ip`` group;
then starts containers one at a time and in a burst (BENCH_SEQUENTIAL, BENCH_BURST),
and prints p50/p95/max and the calls made. The latency includes the readiness probe
(``tcp``, to a server listening from its first moment).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import boto3
import docker

IMAGE = "warden-test:latest"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from local_services import HTTPD_8080, percentile, start_moto, start_redis  # noqa: E402


class Stamps:
    """What the proxy saw: each target's first registration answer (wall time), and the
    RegisterTargets calls."""

    def __init__(self) -> None:
        self.registered: dict[str, float] = {}
        self.calls = 0


def proxy(upstream: str, stamps: Stamps) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            request = urllib.request.Request(upstream + self.path, data=body, method="POST", headers={
                k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    status, answer, kind = response.status, response.read(), response.headers.get("Content-Type")
            except urllib.error.HTTPError as error:
                status, answer, kind = error.code, error.read(), error.headers.get("Content-Type")
            form = parse_qs(body.decode(errors="replace"))
            if form.get("Action") == ["RegisterTargets"] and status == 200:
                now = time.time()
                stamps.calls += 1
                n = 1
                while f"Targets.member.{n}.Id" in form:
                    stamps.registered.setdefault(form[f"Targets.member.{n}.Id"][0], now)
                    n += 1
            self.send_response(status)
            self.send_header("Content-Type", kind or "text/xml")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> int:
    sequential = int(os.environ.get("BENCH_SEQUENTIAL", "10"))
    burst = int(os.environ.get("BENCH_BURST", "50"))
    client = docker.from_env()
    server, port = start_redis()
    moto, moto_url = start_moto()
    stamps = Stamps()
    front = proxy(moto_url, stamps)
    aws_env = dict(AWS_ACCESS_KEY_ID="local", AWS_SECRET_ACCESS_KEY="local", AWS_DEFAULT_REGION="us-east-1")
    os.environ.update(aws_env)
    ec2 = boto3.client("ec2", endpoint_url=moto_url)
    elbv2 = boto3.client("elbv2", endpoint_url=moto_url)
    image = ec2.describe_images()["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]
    group = elbv2.create_target_group(Name="bench", Protocol="HTTP", Port=80, VpcId=instance["VpcId"],
                                      TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "services.json"), "w") as handle:
        json.dump([{"name": "shop", "containerName": prefix, "port": 8080, "targetGroupArn": group,
                    "targetMode": "container"}], handle)
    with open(os.path.join(folder, "config.json"), "w") as handle:
        json.dump({"nginxRedisAddress": f"127.0.0.1:{port}", "serviceManagementRedisAddress": f"127.0.0.1:{port}",
                   "handlers": ["elb"], "registrarSleepTimeSeconds": 600, "instanceId": instance["InstanceId"],
                   "region": "us-east-1"}, handle)
    env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{front.server_address[1]}")
    warden = subprocess.Popen([sys.executable, "-m", "warden", "--config", os.path.join(folder, "config.json"),
                               "--log-level", os.environ.get("BENCH_LOG_LEVEL", "warning"), "registrar"],
                              cwd=ROOT, env=env)
    time.sleep(3)
    events = client.api.events(decode=True, filters={"type": "container", "event": ["start"]})
    starts: dict[str, float] = {}

    def read_events() -> None:
        for event in events:
            starts.setdefault(event["id"], event["timeNano"] / 1e9)

    threading.Thread(target=read_events, daemon=True).start()
    made: list = []

    def start_one() -> object:
        container = client.containers.run(IMAGE, HTTPD_8080, name=f"{prefix}-{uuid.uuid4().hex[:6]}",
                                          detach=True, stop_signal="SIGKILL")
        made.append(container)
        return container

    def address(container: object) -> str:
        container.reload()  # type: ignore[attr-defined]
        return container.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]  # type: ignore[attr-defined]

    def wait_registered(addresses: list[str], timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if all(a in stamps.registered for a in addresses):
                return
            time.sleep(0.02)
        raise SystemExit(f"targets not registered within {timeout:.0f} s")

    results = {}
    try:
        for phase, count in (("sequential", sequential), (f"burst of {burst}", burst)):
            calls_before = stamps.calls
            if phase == "sequential":
                batch = []
                for _ in range(count):
                    c = start_one()
                    wait_registered([address(c)])
                    batch.append(c)
            else:
                with ThreadPoolExecutor(burst) as pool:
                    batch = list(pool.map(lambda _: start_one(), range(count)))
                wait_registered([address(c) for c in batch])
            latencies = [stamps.registered[address(c)] - starts[c.id] for c in batch]  # type: ignore[attr-defined]
            results[phase] = (latencies, stamps.calls - calls_before)
            for c in batch:
                c.remove(force=True)  # type: ignore[attr-defined]
            time.sleep(2)
            stamps.registered.clear()
    finally:
        for c in made:
            try:
                c.remove(force=True)  # type: ignore[attr-defined]
            except docker.errors.NotFound:
                pass
        warden.terminate()
        warden.wait(30)
        front.shutdown()
        moto.terminate()
        server.terminate()
    print(f"\nContainer targets (ip group on moto): Docker's start event -> RegisterTargets answered (ms), "
          f"{os.cpu_count()} cores")
    print(f"{'phase':<16} {'n':>3} {'p50':>7} {'p95':>7} {'max':>7} {'RegisterTargets calls':>22}")
    for phase, (latencies, calls) in results.items():
        print(f"{phase:<16} {len(latencies):>3} {percentile(latencies, 0.5) * 1000:>7.1f} "
              f"{percentile(latencies, 0.95) * 1000:>7.1f} {max(latencies) * 1000:>7.1f} {calls:>22}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
