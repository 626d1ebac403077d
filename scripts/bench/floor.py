"""The floor Warden's route latency is measured against: the least a Registrar can do,
a bare loop of Docker events -> inspect -> HSET (and kill -> HDEL), with no matching,
no signals and no handlers. Writes ``floor:backend:<name>`` so both can run on the same
containers.

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
    events = client.api.events(decode=True, filters={"type": "container", "event": ["start", "kill"]})
    print("ready", flush=True)
    addresses: dict[str, str] = {}
    for event in events:
        if event["Action"] == "kill":
            address = addresses.pop(event["id"], None)
            if address:
                r.hdel("floor:backend:web", address)
            continue
        data = client.api.inspect_container(event["id"])
        if not data["Name"].lstrip("/").startswith(prefix):
            continue
        ip = data["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        addresses[event["id"]] = f"{ip}:{port}"
        r.hset("floor:backend:web", addresses[event["id"]], "0")


if __name__ == "__main__":
    main()
