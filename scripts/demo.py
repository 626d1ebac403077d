"""Warden's demo: a Redx Redis of its own, ``warden registrar`` on a local config, and
containers churning while the routes change live.

Run through ``scripts/demo``, which installs and starts what it needs. It uses a
redis-server on a free loopback port (never 6379) and removes its containers after.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import docker
import redis

IMAGE = "warden-test:latest"
LABEL = "warden.demo"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def show(redx: redis.Redis, title: str) -> None:
    """Print what Redx would read now."""
    print(f"\n== {title}")
    for key in sorted(redx.scan_iter("frontend:*")):
        backend = redx.get(key)
        servers = sorted(redx.hkeys(f"backend:{backend}"))
        print(f"   {key[len('frontend:'):]:<28} -> {backend:<6} {', '.join(servers) or '(no servers)'}")
    sys.stdout.flush()


def settle() -> None:
    time.sleep(0.6)


def main() -> int:
    rounds = int(os.environ.get("WARDEN_DEMO_ROUNDS", "3"))
    folder = tempfile.mkdtemp(prefix="warden-demo-")
    port = free_port()
    redis_server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"], stdout=subprocess.DEVNULL)
    redx = redis.Redis(port=port, decode_responses=True)
    for _ in range(50):
        try:
            redx.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    client = docker.from_env()
    services = os.path.join(folder, "services")
    os.makedirs(services)
    with open(os.path.join(folder, "config.json"), "w") as handle:
        json.dump({"nginxRedisAddress": f"127.0.0.1:{port}", "serviceDescriptionFilename": "services",
                   "registrarSleepTimeSeconds": 30, "handlers": ["redx"]}, handle, indent=1)
    with open(os.path.join(services, "web.json"), "w") as handle:
        json.dump([{"name": "web", "containerName": "demo-web", "port": 8080,
                    "loadBalancerUrl": "web.localhost", "site": ""}], handle)
    print(f"Demo folder {folder}; Redx Redis on 127.0.0.1:{port}; warden's log follows on stderr.")
    warden = subprocess.Popen([sys.executable, "-m", "warden", "--config",
                               os.path.join(folder, "config.json"), "registrar"])
    made = []

    def run(name: str, **kw: object) -> docker.models.containers.Container:
        container = client.containers.run(IMAGE, kw.pop("command", "sleep 600"), name=name,
                                          detach=True, labels={LABEL: "1", **kw.pop("labels", {})},
                                          stop_signal="SIGKILL", **kw)
        made.append(container)
        return container

    try:
        time.sleep(1.5)
        show(redx, "Warden started: the frontend is written, no containers yet")
        for n in range(rounds):
            a = run(f"demo-web-{n}a")
            b = run(f"demo-web-{n}b")
            settle()
            show(redx, f"round {n + 1}: started {a.name} and {b.name}")
            a.stop(timeout=1)
            settle()
            show(redx, f"round {n + 1}: stopped {a.name}")
            b.remove(force=True)
            a.remove(force=True)
            settle()
            show(redx, f"round {n + 1}: removed both")
        with open(os.path.join(services, "api.json"), "w") as handle:
            json.dump({"name": "api", "port": 9000, "loadBalancerUrl": "web.localhost", "site": "/api/"},
                      handle)
        api = run("demo-api-1", labels={"warden.service": "api"})
        settle()
        show(redx, "added services/api.json and a container labelled warden.service=api")
        checked = run("demo-web-checked", command="sh -c 'sleep 600'", healthcheck={
            "test": ["CMD", "sh", "-c", "test -f /tmp/ok"], "interval": 300_000_000, "retries": 1})
        settle()
        show(redx, f"started {checked.name} with a health check, not healthy yet: not routed")
        checked.exec_run("touch /tmp/ok")
        time.sleep(1.2)
        show(redx, f"{checked.name} is healthy: routed")
        redx.flushall()
        time.sleep(1.8)
        show(redx, "someone flushed the Redx Redis: Warden noticed and refilled it")
        api.remove(force=True)
        checked.remove(force=True)
        settle()
        show(redx, "removed the remaining containers")
    finally:
        warden.send_signal(signal.SIGTERM)
        code = warden.wait(30)
        for container in made:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
        redis_server.terminate()
        redis_server.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\nwarden exited {code} on SIGTERM. Demo done.")
    return code


if __name__ == "__main__":
    sys.exit(main())
