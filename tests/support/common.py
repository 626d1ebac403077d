"""What every part of the harness shares: the run id, free ports, waiting for a condition, a small HTTP server and a webhook receiver."""

from __future__ import annotations
import atexit
import contextlib
import json
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
import pytest



ROOT = Path(__file__).resolve().parent.parent.parent


RUN = uuid.uuid4().hex[:8]


#: the one folder of this run that every scratch folder of the harness sits in (a Redis
#: server's data, a socket proxy's socket), removed when the run ends: hundreds of runs
#: must not leave thousands of folders behind
SCRATCH = Path(tempfile.mkdtemp(prefix=f"warden-tests-{RUN}-"))
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)


def scratch(prefix: str) -> str:
    """A new folder under this run's scratch folder."""
    return tempfile.mkdtemp(prefix=prefix, dir=SCRATCH)


def http_get(url: str) -> tuple[int, str]:
    """GET ``url`` (2 s at most): its status and body, an error status included."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def through_proxy(port: int, host: str, path: str = "/") -> tuple[int, str]:
    """One request to a proxy on loopback ``port`` with ``Host: host``: its status and
    body (status 0 when it does not answer)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    except OSError as error:
        return 0, str(error)
    finally:
        conn.close()


def end_process(process: Any) -> None:
    """SIGTERM, then SIGKILL after 10 s; nothing when it already ended."""
    import subprocess

    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
               what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as error:  # noqa: BLE001 - keep polling through transient errors
            last = error
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


@contextlib.contextmanager
def serve_http(handler: type) -> Any:
    """An HTTP server of the test's own on loopback; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, name="test-http")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


class Webhook:
    """What a webhook receiver of the test's own was sent: ``url`` to POST to, and each
    request's ``headers`` and JSON ``bodies``, in order."""

    def __init__(self) -> None:
        self.url = ""
        self.headers: list[dict] = []
        self.bodies: list[dict] = []
        self.paths: list[str] = []


@pytest.fixture
def webhook() -> Any:
    """A webhook receiver on loopback (a :class:`Webhook`), answering 202 to each POST."""
    hook = Webhook()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            hook.headers.append(dict(self.headers))
            hook.bodies.append(body)
            hook.paths.append(self.path)
            self.send_response(202)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with serve_http(Receiver) as url:
        hook.url = f"{url}/hook"
        yield hook

