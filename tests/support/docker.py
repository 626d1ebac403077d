"""The real Docker engine: the offline test image, containers that serve the test ports, and a UNIX-socket proxy in front of dockerd that answers errors."""

from __future__ import annotations
import itertools
import json
import os
import socket
import subprocess
import threading
from typing import Any, Optional
import pytest

from support.common import ROOT, RUN, scratch
from support.faults import _drop


IMAGE = os.environ.get("WARDEN_TEST_IMAGE", "warden-test:latest")


#: every container and network a test run makes carries this label, for clean-up
LABEL = "warden.test"


#: the ports the tests' services use
PORTS = (80, 7000, 8080, 9000, 9090)


#: what a test container runs unless told otherwise: a server answering on every port
#: the tests use (so it passes a readiness probe), under a PID 1 that ignores SIGTERM
#: (so ``docker stop`` leaves it running until the kill, as a slow server would)
SERVE = ("sh -c 'for port in " + " ".join(map(str, PORTS))
         + "; do httpd -p $port -h /www; done; exec sleep 600'")


@pytest.fixture(scope="session")
def docker_client() -> Any:
    """A client of the real Docker engine, with the offline test image built."""
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as error:  # noqa: BLE001
        pytest.fail(f"no Docker engine answers ({error}): run scripts/test, which starts one")
    subprocess.run(["bash", str(ROOT / "scripts" / "build-test-image.sh")], check=True)
    # Containers an interrupted earlier run left behind would be matched by image.
    _clean_docker(client, run=None)
    yield client
    _clean_docker(client)
    client.close()


def _clean_docker(client: Any, run: Optional[str] = RUN) -> None:
    label = f"{LABEL}={run}" if run else LABEL
    for container in client.containers.list(all=True, filters={"label": label}):
        try:
            container.remove(force=True)
        except Exception:  # noqa: BLE001 - gone already
            pass
    for network in client.networks.list(filters={"label": label}):
        try:
            network.remove()
        except Exception:  # noqa: BLE001
            pass


class Containers:
    """Starts labelled test containers from the offline image; removes them after."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._numbers = itertools.count(1)  # next() on it is safe from several threads

    def run(self, name: str = "", command: str = SERVE, labels: Optional[dict] = None,
            **kw: Any) -> Any:
        full = f"wt-{RUN}-{name or 'c'}-{next(self._numbers)}"
        container = self.client.containers.run(
            IMAGE, command, name=full, detach=True,
            labels={LABEL: RUN, **(labels or {})}, **kw)
        container.reload()
        return container

    def network(self, name: str, **kw: Any) -> Any:
        return self.client.networks.create(f"wt-{RUN}-{name}", labels={LABEL: RUN}, **kw)


@pytest.fixture
def containers(docker_client: Any) -> Any:
    """Start containers with ``containers.run(name, ...)``; all go after the test."""
    helper = Containers(docker_client)
    yield helper
    _clean_docker(docker_client)


def ip_of(container: Any, network: str = "bridge") -> str:
    """A container's IPv4 address on ``network``."""
    container.reload()
    return container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]


class DockerProxy:
    """A UNIX-socket proxy of the tests' own in front of dockerd: point ``DOCKER_HOST``
    at ``url``. Each request is read whole and passed to the engine on a connection of
    its own (so every request is seen, even on a kept-alive client connection), unless
    ``plan`` names its path: ``listing`` (``GET /containers/json``) answers, in order,
    ``"500"`` (the engine's error document) or ``"no-id"`` (the real listing with
    ``Id`` dropped from every entry); a used-up plan passes."""

    upstream = "/var/run/docker.sock"

    def __init__(self) -> None:
        # A short path: a UNIX socket's path holds at most 107 bytes.
        self.path = os.path.join(scratch("dp-"), "docker.sock")
        self.url = f"unix://{self.path}"
        self.plan: dict[str, list[str]] = {"listing": []}
        #: (kind, what was answered) of each request the plan named
        self.answered: list[str] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(64)
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="test-docker-proxy")
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        _drop(self._server)
        for sock in list(self._sockets):
            _drop(sock)
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), name="test-docker-proxy-conn",
                             daemon=True).start()

    @staticmethod
    def _read_request(client: socket.socket, buffered: bytes) -> tuple[Optional[bytes], bytes, bytes]:
        """(head, body, what is left over), or head None when the client closed."""
        while b"\r\n\r\n" not in buffered:
            chunk = client.recv(65536)
            if not chunk:
                return None, b"", b""
            buffered += chunk
        head, _, rest = buffered.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(rest) < length:
            chunk = client.recv(65536)
            if not chunk:
                break
            rest += chunk
        return head, rest[:length], rest[length:]

    def _upstream(self, head: bytes, body: bytes) -> socket.socket:
        lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(self.upstream)
        upstream.sendall(b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n" + body)
        self._sockets.append(upstream)
        return upstream

    def _serve(self, client: socket.socket) -> None:
        buffered = b""
        try:
            while not self._stop.is_set():
                head, body, buffered = self._read_request(client, buffered)
                if head is None:
                    return
                method, target = head.split(b" ")[:2]
                path = target.decode().split("?")[0]
                planned = self.plan["listing"] if method == b"GET" and path.endswith("/containers/json") else []
                answer = planned.pop(0) if planned else "pass"
                if answer == "500":
                    self.answered.append("listing:500")
                    payload = b'{"message": "injected by the test: engine error"}'
                    client.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
                    continue
                upstream = self._upstream(head, body)
                if answer == "no-id":
                    self.answered.append("listing:no-id")
                    raw = b""
                    while True:
                        chunk = upstream.recv(65536)
                        if not chunk:
                            break
                        raw += chunk
                    _, _, payload = raw.partition(b"\r\n\r\n")
                    if b"chunked" in raw.partition(b"\r\n\r\n")[0].lower():
                        payload = _unchunk(payload)
                    entries = [{k: v for k, v in e.items() if k != "Id"} for e in json.loads(payload)]
                    payload = json.dumps(entries).encode()
                    client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
                    upstream.close()
                    continue
                while True:
                    chunk = upstream.recv(65536)
                    if not chunk:
                        break
                    client.sendall(chunk)
                upstream.close()
        except OSError:
            pass
        finally:
            client.close()


def _unchunk(data: bytes) -> bytes:
    """An HTTP/1.1 chunked body, joined."""
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2:]
    return out


@pytest.fixture
def docker_proxy(docker_client: Any) -> Any:
    """A :class:`DockerProxy` in front of the tests' engine."""
    proxy = DockerProxy()
    try:
        yield proxy
    finally:
        proxy.close()

