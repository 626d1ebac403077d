"""A real HAProxy (Debian's ``haproxy``, installed by scripts/setup.sh) of the tests'
own: a frontend on a loopback port that picks its backend from Warden's map, the
backends the tests' services use, a fallback that answers 503, and the runtime API on
a UNIX socket in the test's folder."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from support.common import end_process, eventually, free_port, through_proxy

#: the backends haproxy.cfg declares for the tests' services
BACKENDS = ("web", "api", "shop")


def config_text(folder: Path, port: int, backends: tuple[str, ...] = BACKENDS) -> str:
    """The README's minimal haproxy.cfg, with the test's paths and port."""
    declared = "".join(f"backend {name}\n    balance roundrobin\n" for name in backends)
    return f"""global
    stats socket {folder}/admin.sock mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend http
    bind 127.0.0.1:{port}
    http-request set-var(txn.path) path
    http-request set-var(txn.route) req.hdr(host),host_only,lower,concat(,txn.path)
    use_backend %[var(txn.route),map_beg({folder}/warden.map)]
    default_backend fallback

{declared}
backend fallback
    http-request return status 503 content-type text/plain string "fallback"
"""


class Haproxy:
    """One HAProxy process; ``restart()`` starts it again from its file config alone."""

    def __init__(self, folder: Path, backends: tuple[str, ...] = BACKENDS) -> None:
        self.folder = folder
        self.port = free_port()
        self.socket = folder / "admin.sock"
        self.map = folder / "warden.map"
        self.cfg = folder / "haproxy.cfg"
        self.cfg.write_text(config_text(folder, self.port, backends))
        self.map.write_text("")
        self.process: Any = None

    @property
    def settings(self) -> dict:
        """The ``haproxy`` config key that points Warden at it."""
        return {"runtimeApi": str(self.socket), "map": str(self.map)}

    def start(self) -> "Haproxy":
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(["haproxy", "-db", "-f", str(self.cfg)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        eventually(lambda: self.socket.exists() or self.process.poll() is not None, 10, what="HAProxy up")
        assert self.process.poll() is None, self.process.stderr.read().decode()
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
        end_process(self.process)

    def restart(self) -> None:
        self.stop()
        self.start()

    def command(self, text: str) -> str:
        import socket

        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(5)
            conn.connect(str(self.socket))
            conn.sendall(text.encode() + b"\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self, backend: str) -> dict[str, int]:
        """``address -> srv_admin_state`` of the backend's servers."""
        found = {}
        for line in self.command(f"show servers state {backend}").splitlines():
            fields = line.split()
            if len(fields) >= 19 and not line.startswith("#"):
                found[f"{fields[4]}:{fields[18]}"] = int(fields[6])
        return found

    def entries(self) -> dict[str, str]:
        found = {}
        for line in self.command(f"show map {self.map}").splitlines():
            parts = line.split()
            if len(parts) == 3:
                found[parts[1]] = parts[2]
        return found

    def get(self, host: str, path: str = "/") -> tuple[int, str]:
        """One request through HAProxy, ``Host: host``."""
        return through_proxy(self.port, host, path)


@pytest.fixture
def haproxy(tmp_path: Path) -> Any:
    """A running :class:`Haproxy` of the test's own."""
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed: run scripts/test, which installs Debian's haproxy")
    proxy = Haproxy(tmp_path / "haproxy" if (tmp_path / "haproxy").mkdir() is None else tmp_path)
    proxy.start()
    time.sleep(0.1)
    yield proxy
    proxy.stop()
