"""The daemon's memory: `warden registrar`'s RSS idle, and after about 1,000 Docker
events, beside the bare floor loop's (scripts/bench/floor.py) under the same events.

Run by hand (after scripts/setup.sh): .venv/bin/python scripts/bench/rss.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import docker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from local_services import HTTPD_8080, start_redis  # noqa: E402

IMAGE = "warden-test:latest"


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    target = int(os.environ.get("EVENTS", "1000"))
    server, port = start_redis()
    client = docker.from_env(timeout=60)
    prefix = f"bench-rss-{uuid.uuid4().hex[:6]}"
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "services.json"), "w") as handle:
        json.dump([{"name": "web", "containerName": prefix, "port": 8080, "loadBalancerUrl": "web.bench"}], handle)
    with open(os.path.join(folder, "config.json"), "w") as handle:
        json.dump({"nginxRedisAddress": f"127.0.0.1:{port}", "handlers": ["redx"],
                   "registrarSleepTimeSeconds": 60}, handle)
    warden = subprocess.Popen([sys.executable, "-m", "warden", "--config", os.path.join(folder, "config.json"),
                               "--log-level", "warning", "registrar"], cwd=ROOT)
    floor = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "bench", "floor.py"),
                              str(port), prefix, "8080"], stdout=subprocess.PIPE, text=True)
    floor.stdout.readline()
    counted = [0]
    stream = client.api.events(decode=True, filters={"type": ["container", "network"]})

    def count() -> None:
        for event in stream:
            name = (event.get("Actor") or {}).get("Attributes", {}).get("name", "")
            if name.startswith(prefix) or event.get("Type") == "network":
                counted[0] += 1

    threading.Thread(target=count, daemon=True).start()
    try:
        time.sleep(5)
        idle = (rss_mb(warden.pid), rss_mb(floor.pid))

        def one(_: int) -> None:
            container = client.containers.run(IMAGE, HTTPD_8080, detach=True, stop_signal="SIGKILL",
                                              name=f"{prefix}-{uuid.uuid4().hex[:8]}")
            container.remove(force=True)

        with ThreadPoolExecutor(4) as pool:
            while counted[0] < target:
                list(pool.map(one, range(20)))
        time.sleep(3)
        busy = (rss_mb(warden.pid), rss_mb(floor.pid))
    finally:
        stream.close()
        warden.terminate()
        floor.terminate()
        warden.wait(30)
        floor.wait(10)
        server.terminate()
    print(f"\nResident memory (MB), idle and after {counted[0]} Docker events")
    print(f"{'process':<16} {'idle':>8} {'after':>8}")
    print(f"{'warden':<16} {idle[0]:>8.1f} {busy[0]:>8.1f}")
    print(f"{'floor loop':<16} {idle[1]:>8.1f} {busy[1]:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
