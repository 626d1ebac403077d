"""Scaling reaction: a publish on `warden:metric` to the RunTask call reaching ECS (the
moto server, behind a small proxy that timestamps each RunTask).

Run by hand (after scripts/setup.sh): .venv/bin/python scripts/bench/scaling_reaction.py
One `warden manager` (default settings but zoneCheck none) leads; TRIALS times the
metric goes up (one RunTask expected) and back down.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import redis

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from local_services import fargate_family, free_port, start_moto, start_redis  # noqa: E402


def main() -> int:
    trials = int(os.environ.get("TRIALS", "10"))
    server, port = start_redis()
    moto, upstream = start_moto()
    run_tasks: list[float] = []

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("X-Amz-Target", "").endswith(".RunTask"):
                run_tasks.append(time.monotonic())
            request = urllib.request.Request(upstream + self.path, data=body, method="POST",
                                             headers={k: v for k, v in self.headers.items()
                                                      if k.lower() not in ("host", "content-length")})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    status, data, kind = response.status, response.read(), response.headers.get("Content-Type")
            except urllib.error.HTTPError as error:
                status, data, kind = error.code, error.read(), error.headers.get("Content-Type")
            self.send_response(status)
            self.send_header("Content-Type", kind or "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", free_port()), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{proxy.server_address[1]}",
               AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
               AWS_EC2_METADATA_DISABLED="true", WARDEN_INSTANCE_ID="i-bench")
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
    os.environ["AWS_ENDPOINT_URL"] = upstream
    ecs = boto3.client("ecs")
    awsvpc = fargate_family("bench", "worker")
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "services.json"), "w") as handle:
        json.dump([{"name": "worker", "port": 80, "taskName": "worker", "cluster": "bench",
                    "metric": {"type": "redis", "key": "demand"},
                    "scaling": {"steps": [[0, 1], [10, 2]], "scaleDownDelaySeconds": 0},
                    "runTask": {"launchType": "FARGATE", "networkConfiguration": awsvpc}}], handle)
    with open(os.path.join(folder, "config.json"), "w") as handle:
        json.dump({"serviceManagementRedisAddress": f"127.0.0.1:{port}", "zoneCheck": "none",
                   "handlers": ["ecs"]}, handle)
    central = redis.Redis(port=port, db=11, decode_responses=True)
    central.set("demand", "0")
    manager = subprocess.Popen([sys.executable, "-m", "warden", "--config", os.path.join(folder, "config.json"),
                                "--log-level", "warning", "manager"], env=env, cwd=ROOT)

    def running() -> int:
        return len(ecs.list_tasks(cluster="bench", family="worker", desiredStatus="RUNNING")["taskArns"])

    def wait(check, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise SystemExit("timed out")
            time.sleep(0.01)

    reactions = []
    try:
        wait(lambda: running() == 1)
        for _ in range(trials):
            time.sleep(1.2)  # passes for one service are at most one a second
            seen = len(run_tasks)
            central.set("demand", "12")
            published = time.monotonic()
            central.publish("warden:metric", "worker")
            wait(lambda: len(run_tasks) > seen)
            reactions.append(run_tasks[seen] - published)
            wait(lambda: running() == 2)
            time.sleep(1.2)
            central.set("demand", "0")
            central.publish("warden:metric", "worker")
            wait(lambda: running() == 1)
    finally:
        manager.terminate()
        manager.wait(30)
        moto.terminate()
        proxy.shutdown()
        server.terminate()
    print(f"\nScaling reaction, publish on warden:metric -> RunTask at ECS (ms), {len(reactions)} trials")
    print(f"p50 {statistics.median(reactions) * 1000:.1f}   max {max(reactions) * 1000:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
