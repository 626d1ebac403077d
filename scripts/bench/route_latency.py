"""Route latency: Docker's own event time to the route being visible in Redis, for
Warden and for the bare floor loop (floor.py) on the same containers.

Run by hand (after scripts/setup.sh): .venv/bin/python scripts/bench/route_latency.py
It starts a redis-server of its own on a free loopback port with keyspace notifications,
`warden registrar` and the floor loop, then starts containers one at a time and in a
burst, and prints p50/p95/max for both. Change visibility is timed by a keyspace
notification, so no polling interval blurs it.
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
import redis

IMAGE = "warden-test:latest"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from local_services import HTTPD_8080, percentile, start_redis  # noqa: E402


class Watch:
    """Records when each address appears in, and vanishes from, each watched hash."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.seen: dict[tuple[str, str], float] = {}
        self.gone: dict[tuple[str, str], float] = {}
        self.present: dict[str, set] = {}
        self.pubsub = r.pubsub()
        self.pubsub.psubscribe("__keyspace@0__:*backend:web")
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.stop = threading.Event()
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            message = self.pubsub.get_message(timeout=0.1)
            if not message or message["type"] != "pmessage" or message["data"] not in (b"hset", b"hdel", b"del"):
                continue
            key = message["channel"].decode().split(":", 1)[1]
            addresses = {a.decode() for a in self.r.hkeys(key)}
            # Taken after the read: an upper bound on when each change happened.
            now = time.time()
            for address in addresses:
                self.seen.setdefault((key, address), now)
            for address in self.present.get(key, set()) - addresses:
                self.gone.setdefault((key, address), now)
            self.present[key] = addresses


def main() -> int:
    sequential = int(os.environ.get("BENCH_SEQUENTIAL", "20"))
    burst = int(os.environ.get("BENCH_BURST", "50"))
    client = docker.from_env()
    server, port = start_redis("--notify-keyspace-events", "Kh")
    r = redis.Redis(port=port)
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "services.json"), "w") as handle:
        json.dump([{"name": "web", "containerName": prefix, "port": 8080,
                    "loadBalancerUrl": "web.bench"}], handle)
    with open(os.path.join(folder, "config.json"), "w") as handle:
        json.dump({"nginxRedisAddress": f"127.0.0.1:{port}", "handlers": ["redx"],
                   "registrarSleepTimeSeconds": 600}, handle)
    watch = Watch(r)
    warden = subprocess.Popen([sys.executable, "-m", "warden", "--config",
                               os.path.join(folder, "config.json"), "--log-level", os.environ.get("BENCH_LOG_LEVEL", "warning"),
                               "registrar"], cwd=ROOT)
    floor = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "bench", "floor.py"),
                              str(port), prefix, "8080"], stdout=subprocess.PIPE, text=True)
    floor.stdout.readline()
    time.sleep(2)
    events = client.api.events(decode=True, filters={"type": "container", "event": ["start", "kill"]})
    starts: dict[str, float] = {}
    kills: dict[str, float] = {}

    def read_events() -> None:
        for event in events:
            (starts if event["Action"] == "start" else kills).setdefault(event["id"], event["timeNano"] / 1e9)

    reader = threading.Thread(target=read_events, daemon=True)
    reader.start()
    made = []
    counter = [0]

    def start_one() -> docker.models.containers.Container:
        counter[0] += 1
        container = client.containers.run(IMAGE, HTTPD_8080, name=f"{prefix}-{uuid.uuid4().hex[:6]}",
                                          detach=True, stop_signal="SIGKILL")
        made.append(container)
        return container

    def wait_routes(containers: list, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        keys = [("backend:web", None), ("floor:backend:web", None)]
        while time.time() < deadline:
            addresses = {c.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] + ":8080"
                         for c in containers}
            if all((k, a) in watch.seen for k, _ in keys for a in addresses):
                return
            time.sleep(0.05)
        raise SystemExit("routes did not appear within 30 s")

    def wait_gone(addresses: list, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        keys = ("backend:web", "floor:backend:web")
        while time.time() < deadline:
            if all((k, a) in watch.gone for k in keys for a in addresses):
                return
            time.sleep(0.02)
        raise SystemExit("routes did not go within 30 s")

    results = {}
    try:
        for phase, count in (("sequential", sequential), (f"burst of {burst}", burst)):
            if phase == "sequential":
                batch = []
                for _ in range(count):
                    c = start_one()
                    c.reload()
                    wait_routes([c])
                    batch.append(c)
            else:
                with ThreadPoolExecutor(burst) as pool:
                    batch = list(pool.map(lambda _: start_one(), range(count)))
                for c in batch:
                    c.reload()
                wait_routes(batch)
            lat = {"warden": [], "floor": []}
            for c in batch:
                address = c.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] + ":8080"
                lat["warden"].append(watch.seen[("backend:web", address)] - starts[c.id])
                lat["floor"].append(watch.seen[("floor:backend:web", address)] - starts[c.id])
            results[f"start {phase}"] = lat
            # kill -> unroute on the same containers, one at a time or all at once
            addresses = {c.id: c.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] + ":8080"
                         for c in batch}
            if phase == "sequential":
                for c in batch:
                    c.kill()
                    wait_gone([addresses[c.id]])
            else:
                with ThreadPoolExecutor(burst) as pool:
                    list(pool.map(lambda c: c.kill(), batch))
                wait_gone(list(addresses.values()))
            lat = {"warden": [], "floor": []}
            for c in batch:
                lat["warden"].append(watch.gone[("backend:web", addresses[c.id])] - kills[c.id])
                lat["floor"].append(watch.gone[("floor:backend:web", addresses[c.id])] - kills[c.id])
            results[f"kill {phase}"] = lat
            for c in batch:
                c.remove(force=True)
            time.sleep(1)
            r.delete("floor:backend:web")
            watch.seen.clear()
            watch.gone.clear()
    finally:
        for c in made:
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass
        warden.terminate()
        floor.terminate()
        warden.wait(30)
        floor.wait(10)
        watch.stop.set()
        server.terminate()
    print(f"\nRoute latency, Docker's start (kill) event time -> route added (removed) in Redis (ms), "
          f"{os.cpu_count()} cores")
    print(f"{'phase':<20} {'who':<7} {'n':>3} {'p50':>7} {'p95':>7} {'max':>7}   ratio p50 / p95")
    for phase, lat in results.items():
        floor_p50, floor_p95 = percentile(lat["floor"], 0.5), percentile(lat["floor"], 0.95)
        for who in ("floor", "warden"):
            values = lat[who]
            p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
            ratio = f"{p50 / floor_p50:.2f}x / {p95 / floor_p95:.2f}x" if who == "warden" else ""
            print(f"{phase:<20} {who:<7} {len(values):>3} {p50 * 1000:>7.1f} {p95 * 1000:>7.1f} "
                  f"{max(values) * 1000:>7.1f}   {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
