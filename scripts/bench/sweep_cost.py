"""Sweep cost with 10, 50 and 200 running containers: Docker API calls and Redis round
trips per sweep, and seconds, to show how a sweep grows.

Run by hand (after scripts/setup.sh): .venv/bin/python scripts/bench/sweep_cost.py
It starts a redis-server of its own, N containers of one service (and as many of a
second one), and times 5 sweeps at each size in-process (Registrar + Redx handler).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import docker
import redis
from redis.connection import Connection

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from local_services import serving, start_redis  # noqa: E402

from warden.config import Config, RedisAddress  # noqa: E402
from warden.handlers.redx import RedxHandler  # noqa: E402
from warden.registrar.registrar import Registrar  # noqa: E402
from warden.services import Service, ServiceCatalog  # noqa: E402
from warden.subscribers.docker import DockerSource  # noqa: E402

IMAGE = "warden-test:latest"


class CountingConnection(Connection):
    """Counts round trips: one per packed command sent (a pipeline is one)."""

    sent = 0

    def send_packed_command(self, command, check_health=True):  # noqa: ANN001 - redis-py's
        CountingConnection.sent += 1
        return super().send_packed_command(command, check_health)


def main() -> int:
    sizes = [int(n) for n in os.environ.get("SIZES", "10,50,200").split(",")]
    server, port = start_redis()
    client = docker.from_env(timeout=60)
    prefix = f"bench-sweep-{uuid.uuid4().hex[:6]}"
    services = (Service("web", 8080, container_name=f"{prefix}-web", load_balancer_url="web.bench"),
                Service("api", 9000, container_name=f"{prefix}-api", load_balancer_url="api.bench"))
    config = Config(path="/dev/null", display_path="-", nginx_redis=RedisAddress(f"redis://127.0.0.1:{port}", 0))
    catalog = ServiceCatalog("/nonexistent", "-")
    made: list = []
    rows = []
    pool = redis.ConnectionPool(port=port, decode_responses=True, connection_class=CountingConnection)
    handler = RedxHandler(config, redis.Redis(connection_pool=pool))
    handler.connect()
    try:
        for size in sizes:
            with ThreadPoolExecutor(8) as workers:
                need = size - len(made)
                made += list(workers.map(lambda n: client.containers.run(
                    IMAGE, serving(8080, 9000), detach=True, stop_signal="SIGKILL",
                    name=f"{prefix}-{'web' if n % 2 else 'api'}-{uuid.uuid4().hex[:6]}"), range(need)))
            source = DockerSource(client)
            registrar = Registrar(config, source, catalog)
            registrar.in_force.file_services = services
            timings, docker_calls, round_trips = [], [], []
            for _ in range(5):
                before_calls = sum(source.calls.values())
                before_trips = CountingConnection.sent
                started = time.perf_counter()
                registrar.sweep("bench", apply=True, wait=True)
                timings.append(time.perf_counter() - started)
                docker_calls.append(sum(source.calls.values()) - before_calls)
                round_trips.append(CountingConnection.sent - before_trips)
            registrar.close()
            rows.append((size, statistics.median(docker_calls), statistics.median(round_trips),
                         statistics.median(timings), max(timings)))
    finally:
        handler.disconnect()
        with ThreadPoolExecutor(8) as workers:
            list(workers.map(lambda c: c.remove(force=True), made))
        server.terminate()
    print(f"\nSweep cost ({len(services)} services; Docker calls: one container list + one network list)")
    print(f"{'containers':>10} {'docker calls':>13} {'redis round trips':>18} {'p50 s':>8} {'max s':>8}")
    for size, calls, trips, p50, worst in rows:
        print(f"{size:>10} {calls:>13.0f} {trips:>18.0f} {p50:>8.4f} {worst:>8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
