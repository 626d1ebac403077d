"""Start-up ordering, receiver isolation, and a Docker engine restart."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, RUN, eventually, ip_of
from warden import signals
from warden.config import load_config
from warden.daemon import registrar_parts
from warden.handlers.redx import RedxHandler
from warden.model import Route
from warden.registrar.registrar import Registrar
from warden.runtime.supervisor import Supervisor
from warden.services import ServiceCatalog
from warden.subscribers.docker import DockerSource


def web_service() -> dict:
    return {"name": "web", "containerName": f"wt-{RUN}-web", "port": 8080,
            "loadBalancerUrl": "web.example.com"}


def test_one_failing_receiver_never_stops_the_others():
    seen, errors = [], []

    def broken(sender, **kw):
        raise RuntimeError("boom")

    def recorder(sender, **kw):
        seen.append(kw["route"])

    def on_error(sender, **kw):
        errors.append((kw["signal_name"], str(kw["error"])))

    route = Route("web", "172.17.0.9:80", "web")
    signals.route_added.connect(broken)
    signals.route_added.connect(recorder)
    signals.handler_error.connect(on_error)
    try:
        results = signals.send(signals.route_added, "test", route=route, container=None)
    finally:
        signals.route_added.disconnect(broken)
        signals.route_added.disconnect(recorder)
        signals.handler_error.disconnect(on_error)
    assert seen == [route]
    assert errors == [("route-added", "boom")]
    assert [r for r, _ in results] == [recorder]


class ListingThenStart(DockerSource):
    """Starts a container right after the first listing returns: only a subscriber
    that opened the event stream before listing can see it."""

    def __init__(self, start) -> None:
        super().__init__()
        self.start = start
        self.started = None

    def running(self):
        listed = super().running()
        if self.started is None:
            self.started = self.start()
        return listed


def test_container_started_during_start_up_is_not_missed(tmp_path: Path, redx, redx_server, containers):
    (tmp_path / "config.json").write_text(
        f'{{"nginxRedisAddress": "127.0.0.1:{redx_server.port}", "handlers": ["redx"],'
        f' "serviceDescriptionFilename": "services.json", "registrarSleepTimeSeconds": 600}}')
    (tmp_path / "services.json").write_text(f"[{__import__('json').dumps(web_service())}]")
    config, problems = load_config(str(tmp_path / "config.json"))
    catalog = ServiceCatalog(config.service_description_path, "services.json")
    catalog.load()
    source = ListingThenStart(lambda: containers.run("web"))
    handler = RedxHandler(config)
    parts = registrar_parts(config, catalog, [handler], source)
    [registrar] = [p.thread for p in parts if isinstance(getattr(p, "thread", None), Registrar)]
    supervisor = Supervisor(parts)
    supervisor.start()
    try:
        eventually(lambda: source.started is not None, 10, what="the listing")
        address = f"{ip_of(source.started)}:8080"
        eventually(lambda: address in redx.hgetall("backend:web"), 5,
                   what="route of the container started during start-up")
        assert registrar.sweeps == 1, "the event, not a later sweep, routed it"
    finally:
        assert supervisor.stop(30) == []


def _exited(pid: int) -> bool:
    """Gone, or a zombie that nobody reaped yet (as under a bare PID namespace)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _dockerd_pid() -> int:
    return int(Path("/var/run/docker.pid").read_text().strip())


def test_docker_restart_with_containers_changed_meanwhile(redx, containers, warden, docker_client):
    # These containers ask for SIGKILL, so the engine's shutdown does not wait on them.
    gone = containers.run("web", stop_signal="SIGKILL")
    back = containers.run("web", stop_signal="SIGKILL", restart_policy={"Name": "always"})
    w = warden([web_service()]).start()
    gone_address = f"{ip_of(gone)}:8080"
    eventually(lambda: len(redx.hgetall("backend:web")) == 2, 5, what="both routed")

    pid = _dockerd_pid()
    try:
        os.kill(pid, signal.SIGTERM)
        eventually(lambda: _exited(pid), 60, what="the engine to exit")
    finally:
        # Whatever happened, the engine runs again for the tests after this one.
        subprocess.run(["bash", str(ROOT / "scripts" / "start-dockerd.sh")], check=True)
    # Changes right after the restart, while Warden is still reconnecting.
    gone.remove(force=True)
    new = containers.run("web")
    back.reload()
    eventually(lambda: back.attrs["State"]["Running"] or back.reload(), 20, what="restart policy")
    expected = {f"{ip_of(back)}:8080", f"{ip_of(new)}:8080"}
    eventually(lambda: set(redx.hgetall("backend:web")) == expected, 30,
               what="routes after the engine restart")
    if gone_address not in expected:  # the engine may hand its address to another
        assert gone_address not in redx.hgetall("backend:web")
    assert "reconnected" in w.log()


def test_backoff_grows_to_its_cap_and_spreads_hosts_apart():
    """A fleet that lost one server must not come back to it in step: each delay is
    shortened by a random part of at most ``jitter``."""
    from warden.runtime.threads import Backoff

    runs = []
    for _ in range(20):
        backoff = Backoff(0.5, 4.0)
        runs.append([backoff.next_delay() for _ in range(6)])
    for delays in runs:
        for delay, nominal in zip(delays, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]):
            assert nominal * (1 - Backoff.jitter) <= delay <= nominal
    assert len({round(delays[0], 6) for delays in runs}) > 1, "every host waits the same"


@pytest.mark.parametrize("listings", [["500", "no-id"], ["no-id"]])
def test_a_failing_listing_at_start_up_is_retried_and_never_ends_the_registrar(
        redx, containers, warden, docker_proxy, listings):
    """The start-up sweep sat outside the loop's guard and caught only a lost
    connection: an entry without ``Id`` ended the Registrar's thread, and a 500 left
    the host unrouted until the periodic sweep, a minute later. Every failed sweep is
    logged and tried again soon, with backoff, and the thread lives on."""
    docker_proxy.plan["listing"] = list(listings)
    before = containers.run("early")
    w = warden([{"name": "web", "containerName": f"wt-{RUN}-", "port": 8080,
                 "loadBalancerUrl": "web.example.com", "readiness": "none"}])
    w.env["DOCKER_HOST"] = docker_proxy.url
    w.start()
    eventually(lambda: redx.hgetall("backend:web") == {f"{ip_of(before)}:8080": "0"}, 10,
               what="the container running before start-up routed")
    assert docker_proxy.answered == [f"listing:{kind}" for kind in listings]
    # The Registrar still follows events.
    after = containers.run("late")
    eventually(lambda: f"{ip_of(after)}:8080" in redx.hgetall("backend:web"), 5, what="a later container routed")
    assert "sweep (start-up) failed" in w.log() or "sweep (start-up) skipped" in w.log()


def test_half_sent_requests_to_the_metrics_server_never_starve_the_daemon(redx, containers, warden):
    """The metrics and health server had no timeout and no connection cap: 129
    half-sent requests under ``ulimit -n 128`` took every descriptor, and then the
    daemon's own connections (Docker, Redis) failed."""
    import resource
    import socket

    from conftest import free_port, http_get

    metrics = free_port()
    w = warden([web_service()], metricsAddress=f"127.0.0.1:{metrics}").start()
    resource.prlimit(w.process.pid, resource.RLIMIT_NOFILE, (128, 128))
    held = []
    try:
        for _ in range(129):
            conn = socket.create_connection(("127.0.0.1", metrics), timeout=2)
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: warden\r\n")  # never finished
            held.append(conn)
        one = containers.run("web")
        eventually(lambda: f"{ip_of(one)}:8080" in redx.hgetall("backend:web"), 10,
                   what="a new container routed while the half-sent requests are held")
        eventually(lambda: http_get(f"http://127.0.0.1:{metrics}/livez")[0] == 200, 15,
                   what="the health server answers again")
        assert "Too many open files" not in w.log()
    finally:
        for conn in held:
            conn.close()
