"""Warden's demo: ``warden run`` on a local config, with containers churning while the
routes change live, this host taking the leadership, and a metric moving an ECS task
count up and down.

Run through ``scripts/demo``, which installs and starts what it needs. It uses a
redis-server of its own on a free loopback port (never 6379; database 0 is the Redx
Redis, 11 the central one) and the moto server standing in for AWS, and removes its
containers after.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import boto3
import docker
import redis

IMAGE = "warden-test:latest"
LABEL = "warden.demo"


from local_services import fargate_family, serving, start_moto, start_redis  # noqa: E402 - scripts/ is on the path


#: the frontends the demo's services configure
FRONTENDS = ("web.localhost", "web.localhost/api/", "shop.localhost")


def show(redx: redis.Redis, title: str) -> None:
    """Print what Redx would read now: a frontend exists only while its backend has a
    server; without it Redx sends the request to its fallback page."""
    print(f"\n== {title}")
    for frontend in FRONTENDS:
        backend = redx.get(f"frontend:{frontend}")
        if backend is None:
            print(f"   {frontend:<28} -> (no frontend key: Redx serves its fallback page)")
            continue
        servers = sorted(redx.hkeys(f"backend:{backend}"))
        print(f"   {frontend:<28} -> {backend:<6} {', '.join(servers)}")
    sys.stdout.flush()


def settle() -> None:
    time.sleep(0.6)


def worker_service() -> dict:
    """An ECS service scaled by a Redis metric, with a Fargate task definition."""
    return {"name": "worker", "port": 9100, "taskName": "worker", "cluster": "demo",
            "metric": {"type": "redis", "key": "demand:worker"},
            "scaling": {"steps": [[0, 1], [10, 3], [50, 6]], "scaleDownDelaySeconds": 0},
            "runTask": {"launchType": "FARGATE",
                        "networkConfiguration": fargate_family("demo", "worker")}}


def tasks_running() -> int:
    ecs = boto3.client("ecs")
    return len(ecs.list_tasks(cluster="demo", family="worker", desiredStatus="RUNNING")["taskArns"])


def main() -> int:
    rounds = int(os.environ.get("WARDEN_DEMO_ROUNDS", "3"))
    folder = tempfile.mkdtemp(prefix="warden-demo-")
    redis_server, port = start_redis()
    redx = redis.Redis(port=port, decode_responses=True)
    central = redis.Redis(port=port, db=11, decode_responses=True)
    moto, moto_url = start_moto()
    os.environ.update(AWS_ENDPOINT_URL=moto_url, AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo",
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
                      WARDEN_INSTANCE_ID="i-demo", WARDEN_AVAILABILITY_ZONE="us-east-1a")
    client = docker.from_env()
    services = os.path.join(folder, "services")
    os.makedirs(services)
    config = os.path.join(folder, "config.json")
    with open(config, "w") as handle:
        json.dump({"nginxRedisAddress": f"127.0.0.1:{port}",
                   "serviceManagementRedisAddress": f"127.0.0.1:{port}",
                   "serviceDescriptionFilename": "services", "registrarSleepTimeSeconds": 30,
                   "zoneCheck": "none", "handlers": ["redx", "ecs"],
                   "labelFrontends": ["*.localhost"]}, handle, indent=1)
    with open(os.path.join(services, "web.json"), "w") as handle:
        json.dump([{"name": "web", "containerName": "demo-web", "port": 8080,
                    "loadBalancerUrl": "web.localhost", "site": ""}], handle)
    central.set("demand:worker", "0")
    with open(os.path.join(services, "worker.json"), "w") as handle:
        json.dump(worker_service(), handle)
    print(f"Demo folder {folder}; Redis on 127.0.0.1:{port} (Redx db 0, central db 11); "
          f"moto for AWS at {moto_url}; warden's log follows on stderr.")
    warden = subprocess.Popen([sys.executable, "-m", "warden", "--config", config, "run"])
    made = []

    def run(name: str, **kw: object) -> docker.models.containers.Container:
        container = client.containers.run(IMAGE, kw.pop("command", serving(8080, 9000)), name=name,
                                          detach=True, labels={LABEL: "1", **kw.pop("labels", {})},
                                          stop_signal="SIGKILL", **kw)
        made.append(container)
        return container

    def demand(value: int) -> None:
        central.set("demand:worker", str(value))
        central.publish("warden:metric", "worker")
        for _ in range(50):
            time.sleep(0.1)
            if tasks_running() == {0: 1, 12: 3, 60: 6}[value]:
                break
        print(f"\n== demand:worker = {value}, published on warden:metric: "
              f"{tasks_running()} worker tasks running in ECS")

    try:
        time.sleep(2.5)
        show(redx, "Warden started, no containers yet: no frontend, so Redx falls back")
        print(f"\n== leader: {central.hget('service-manager', 'id')} "
              f"(epoch {central.hget('service-manager', 'epoch')}); "
              f"{tasks_running()} worker task running (the lowest step)")
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
            json.dump({"name": "api", "containerName": "demo-api", "port": 9000, "loadBalancerUrl": "web.localhost",
                       "site": "/api/"}, handle)
        api = run("demo-api-1", labels={"warden.service": "api"})
        settle()
        show(redx, "added services/api.json and a container demo-api-1 labelled warden.service=api "
                   "(the label narrows among the services its name matches)")
        shop = run("demo-shop-1", labels={"warden.service": "shop", "warden.frontend": "shop.localhost",
                                          "warden.port": "8080"})
        settle()
        show(redx, f"started {shop.name}, whose labels declare service shop: no file needed")
        shop.remove(force=True)
        settle()
        show(redx, f"removed {shop.name}: service shop is gone with its last container")
        slow = run("demo-web-slow", command=serving(8080, after=1.5))
        settle()
        show(redx, f"started {slow.name}, which listens 1.5 s after it starts: not routed yet")
        time.sleep(1.2)
        show(redx, f"{slow.name} accepts connections now: routed")
        slow.remove(force=True)
        flag = f"/tmp/warden-demo-healthy-{os.getpid()}"
        checked = run("demo-web-checked", command="sh -c 'sleep 600'", healthcheck={
            "test": ["CMD", "sh", "-c", f"test -f {flag}"], "interval": 300_000_000, "retries": 1})
        settle()
        show(redx, f"started {checked.name} with a health check, not healthy yet: not routed")
        checked.exec_run(f"touch {flag}")
        time.sleep(1.2)
        show(redx, f"{checked.name} is healthy: routed")
        redx.flushdb()
        time.sleep(1.8)
        show(redx, "someone flushed the Redx Redis: Warden noticed and refilled it")
        demand(12)
        demand(60)
        demand(0)
        api.remove(force=True)
        checked.exec_run(f"rm -f {flag}")
        checked.remove(force=True)
        settle()
        show(redx, "removed the remaining containers")
        print("\n== warden status")
        sys.stdout.flush()
        subprocess.run([sys.executable, "-m", "warden", "--config", config, "status"])
    finally:
        warden.send_signal(signal.SIGTERM)
        code = warden.wait(60)
        for container in made:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
        moto.terminate()
        moto.wait(10)
        redis_server.terminate()
        redis_server.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\nwarden exited {code} on SIGTERM (leadership handed back). Demo done.")
    return code


if __name__ == "__main__":
    sys.exit(main())
