"""A TCP proxy of the test's own that hangs or drops connections."""

from __future__ import annotations
import contextlib
import socket
import threading
import time
from typing import Any, Optional
import pytest



class TcpProxy:
    """A TCP proxy of the tests' own on a loopback port, in front of ``upstream_port``.
    :meth:`black_hole` makes the server behind it vanish without a word: every
    connection open through it, and every one opened in the next ``seconds``, stays
    open and silent for ever (it accepts, reads and never answers; the server side is
    closed, so the server drops what they held). Connections opened after that pass
    again."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(256)
        self.port = self._server.getsockname()[1]
        self._lock = threading.Lock()
        #: client socket -> its upstream socket (None once silent)
        self._pairs: dict[socket.socket, Optional[socket.socket]] = {}
        self._silent_until = 0.0
        #: connections accepted, and those made silent
        self.accepted = self.silenced = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="test-tcp-proxy")
        self._thread.start()

    def black_hole(self, seconds: float, reset_open: bool = False) -> None:
        """From now on the server is silent: connections open now stay open without an
        answer (with ``reset_open``, they are reset instead, as when the old server
        died, so their clients connect again at once, into the silence), and so do
        those opened in the next ``seconds``."""
        with self._lock:
            self._silent_until = time.monotonic() + seconds
            for client, upstream in list(self._pairs.items()):
                if upstream is not None:
                    self._pairs[client] = None
                    self.silenced += 1
                    _drop(upstream)
                if reset_open:
                    self._pairs.pop(client, None)
                    _drop(client)

    def close(self) -> None:
        self._stop.set()
        _drop(self._server)
        with self._lock:
            for client, upstream in self._pairs.items():
                _drop(client)
                if upstream is not None:
                    _drop(upstream)
            self._pairs.clear()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                silent = time.monotonic() < self._silent_until
                upstream = None
                if not silent:
                    try:
                        upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
                        upstream.settimeout(None)
                    except OSError:
                        client.close()
                        continue
                else:
                    self.silenced += 1
                self._pairs[client] = upstream
            threading.Thread(target=self._pump_in, args=(client,), daemon=True,
                             name="test-tcp-proxy-in").start()
            if upstream is not None:
                threading.Thread(target=self._pump_out, args=(client, upstream), daemon=True,
                                 name="test-tcp-proxy-out").start()

    def _pump_in(self, client: socket.socket) -> None:
        """Client to server; while silent, read and drop."""
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                with self._lock:
                    upstream = self._pairs.get(client)
                if upstream is not None:
                    upstream.sendall(data)
        except OSError:
            pass
        with self._lock:
            upstream = self._pairs.pop(client, None)
        _drop(client)
        if upstream is not None:
            _drop(upstream)

    def _pump_out(self, client: socket.socket, upstream: socket.socket) -> None:
        """Server to client, until the server side closes or is silenced."""
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                with self._lock:
                    live = self._pairs.get(client) is upstream
                if not live:
                    return
                client.sendall(data)
        except OSError:
            return
        with self._lock:
            if self._pairs.get(client) is not upstream:
                return  # silenced: the client side stays open and unanswered
            self._pairs.pop(client, None)
        _drop(client)


def _drop(sock: socket.socket) -> None:
    """Close ``sock`` so that a thread blocked on it wakes (a bare close does not)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def tcp_proxy() -> Any:
    """``tcp_proxy(port)``: a :class:`TcpProxy` in front of a loopback port; closed
    after the test."""
    made: list[TcpProxy] = []

    def make(port: int) -> TcpProxy:
        proxy = TcpProxy(port)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()

