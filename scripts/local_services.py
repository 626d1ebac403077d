"""Local stand-ins the demo and the benchmarks start for themselves: a redis-server on a
free loopback port (never 6379), with nothing persisted."""

from __future__ import annotations

import socket
import subprocess
import time

import redis


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
