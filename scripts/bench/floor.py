"""The floor Warden's route latency is measured against: the least a Registrar can do,
a bare loop of Docker events -> inspect -> HSET, with no matching, no signals and no
handlers. Writes ``floor:backend:<name>`` so both can run on the same containers.

usage: python floor.py REDIS_PORT CONTAINER_NAME_PREFIX PORT
"""

from __future__ import annotations

import sys

import docker
import redis


def main() -> None:
    redis_port, prefix, port = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    client = docker.from_env()
    r = redis.Redis(port=redis_port)
    events = client.api.events(decode=True, filters={"type": "container", "event": "start"})
    print("ready", flush=True)
    for event in events:
        data = client.api.inspect_container(event["id"])
        if not data["Name"].lstrip("/").startswith(prefix):
            continue
        ip = data["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        r.hset("floor:backend:web", f"{ip}:{port}", "0")


if __name__ == "__main__":
    main()
