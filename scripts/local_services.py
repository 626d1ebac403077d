"""Local stand-ins the demo and the benchmarks start for themselves: a redis-server on a
free loopback port (never 6379), with nothing persisted."""

from __future__ import annotations

import socket
import subprocess
import time

import redis


#: a test-image command whose PID 1 is the server itself, answering on 8080 from its
#: first moment (for the benchmarks: the probe's cost, not the server's boot, is timed)
HTTPD_8080 = "httpd -f -p 8080 -h /www"


def serving(*ports: int, after: float = 0) -> str:
    """A command for the test image: busybox httpd answering on ``ports`` (``after``
    seconds from the start, like a server slow to boot), so the container passes
    Warden's readiness probe; PID 1 is a sleep."""
    wait = f"sleep {after}; " if after else ""
    starts = "".join(f"httpd -p {port} -h /www; " for port in ports)
    return f"sh -c '{wait}{starts}exec sleep 600'"


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank), as the benchmarks report them."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(*options: str) -> tuple[subprocess.Popen, int]:
    """A redis-server of our own, answering; returns the process and its port."""
    port = free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no", *options],
                               stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    return process, port


def start_moto() -> tuple[subprocess.Popen, str]:
    """The moto server (from this venv) on a free port, answering; returns the process
    and its URL."""
    import os
    import sys

    import boto3

    port = free_port()
    process = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"),
                                "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    probe = boto3.client("ecs", endpoint_url=url, region_name="us-east-1",
                         aws_access_key_id="local", aws_secret_access_key="local")
    for _ in range(100):
        try:
            probe.list_clusters()
            break
        except Exception:  # noqa: BLE001 - still starting
            time.sleep(0.2)
    return process, url


def fargate_family(cluster: str, family: str) -> dict:
    """Create ``cluster`` and a Fargate task definition ``family`` (through boto3 as the
    environment points it); returns the networkConfiguration RunTask needs."""
    import boto3

    ecs, ec2 = boto3.client("ecs"), boto3.client("ec2")
    ecs.create_cluster(clusterName=cluster)
    ecs.register_task_definition(family=family, requiresCompatibilities=["FARGATE"],
                                 networkMode="awsvpc", cpu="256", memory="512",
                                 containerDefinitions=[{"name": family, "image": family,
                                                        "memory": 64, "cpu": 10}])
    return {"awsvpcConfiguration": {
        "subnets": [ec2.describe_subnets()["Subnets"][0]["SubnetId"]],
        "securityGroups": [ec2.describe_security_groups()["SecurityGroups"][0]["GroupId"]]}}
