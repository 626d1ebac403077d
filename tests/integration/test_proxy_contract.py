"""One contract for every proxy Warden feeds, run against each: Redx (its Redis, as
Redx reads it), HAProxy (its runtime API) and Traefik (the Redis its provider reads). A container is
routed once it answers, and not before; it leaves at its stop, before it dies; a
frontend exists only while its backend has a server; the sweep leaves what Warden did
not write; the proxy's store restarting empty is put back without a restart of Warden.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import pytest

from conftest import RUN, eventually, ip_of

LATE = "sh -c 'sleep 1.5; httpd -p 8080 -h /www; exec sleep 600'"


def health_check(*test: str) -> dict:
    """A Docker health check run every 0.2 s, unhealthy at the first failure."""
    return {"test": ["CMD", *test], "interval": 200_000_000, "timeout": 1_000_000_000, "retries": 1,
            "start_period": 0}


#: how a slow starter says it is ready: by answering (Warden's probe finds it), or by
#: Docker's health check, which asks its server
STARTERS = {"late": {"command": LATE},
            "health-checked": {"command": LATE,
                               "healthcheck": health_check("busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/")}}


class Redx:
    """Routes as Redx reads them from its Redis."""

    name = "redx"

    def __init__(self, redx, redx_server) -> None:
        self.redis, self.server = redx, redx_server

    def settings(self) -> dict:
        return {"handlers": ["redx"]}

    def routes(self, backend: str) -> set[str]:
        return {a for a in self.redis.hkeys(f"backend:{backend}") if not a.startswith("_")}

    def frontend(self, frontend: str) -> Optional[str]:
        return self.redis.get(f"frontend:{frontend}")

    def write_foreign_frontend(self, frontend: str, backend: str) -> None:
        self.redis.set(f"frontend:{frontend}", backend)

    def restart_empty(self) -> None:
        self.redis.flushdb()
        self.server.restart()


class Haproxy:
    """Routes as HAProxy holds them: servers taking requests, and Warden's map."""

    name = "haproxy"

    def __init__(self, haproxy) -> None:
        self.proxy = haproxy

    def settings(self) -> dict:
        return {"handlers": ["haproxy"], "haproxy": self.proxy.settings}

    def routes(self, backend: str) -> set[str]:
        return {a for a, state in self.proxy.servers(backend).items() if state == 0}

    def frontend(self, frontend: str) -> Optional[str]:
        from warden.handlers.haproxy import map_key

        return self.proxy.entries().get(map_key(frontend))

    def write_foreign_frontend(self, frontend: str, backend: str) -> None:
        from warden.handlers.haproxy import map_key

        self.proxy.command(f"add map {self.proxy.map} {map_key(frontend)} {backend}")

    def restart_empty(self) -> None:
        self.proxy.restart()


class Traefik:
    """Routes as Traefik's Redis provider reads them."""

    name = "traefik"

    def __init__(self, traefik) -> None:
        self.proxy = traefik
        self.store = traefik.redis_server.client()

    def settings(self) -> dict:
        return {"handlers": ["traefik"], "traefik": self.proxy.settings}

    def routes(self, backend: str) -> set[str]:
        keys = self.store.keys(f"traefik/http/services/{backend}/loadBalancer/servers/*/url")
        return {u.split("://", 1)[1] for u in self.store.mget(keys)} if keys else set()

    def frontend(self, frontend: str) -> Optional[str]:
        from warden.handlers.traefik import router_name

        return self.store.get(f"traefik/http/routers/{router_name(frontend)}/service")

    def write_foreign_frontend(self, frontend: str, backend: str) -> None:
        from warden.handlers.traefik import router_name

        self.store.set(f"traefik/http/routers/{router_name(frontend)}/service", backend)

    def restart_empty(self) -> None:
        self.proxy.redis_server.restart()  # nothing persisted: it comes back empty


@pytest.fixture(params=["redx", "haproxy", "traefik"])
def proxy(request) -> Any:
    if request.param == "redx":
        return Redx(request.getfixturevalue("redx"), request.getfixturevalue("redx_server"))
    request.getfixturevalue("redx")  # emptied: Warden's Redis, even when Redx is not fed
    if request.param == "haproxy":
        return Haproxy(request.getfixturevalue("haproxy"))
    return Traefik(request.getfixturevalue("traefik"))


@pytest.fixture(params=["haproxy", "traefik"])
def served(request) -> Any:
    """A proxy requests can go through (Redx needs nginx, which is not run here)."""
    request.getfixturevalue("redx")
    if request.param == "haproxy":
        found: Any = Haproxy(request.getfixturevalue("haproxy"))
        found.settle = 0.0
    else:
        found = Traefik(request.getfixturevalue("traefik"))
        found.settle = 0.5  # Traefik applies what its provider read a moment later
    return found


WEB = {"name": "web", "containerName": f"wt-{RUN}-web", "port": 8080, "loadBalancerUrl": "web.example.com"}


def test_routed_once_it_answers_and_not_before(proxy, containers, warden):
    warden([WEB], **proxy.settings()).start()
    late = containers.run("web", command=LATE)
    address = f"{ip_of(late)}:8080"
    time.sleep(0.8)
    assert address not in proxy.routes("web"), "routed before it answered"
    assert proxy.frontend("web.example.com") is None, "a frontend over a backend with no server"
    eventually(lambda: address in proxy.routes("web"), 10, what="routed once it answers")
    assert proxy.frontend("web.example.com") == "web"


def test_a_health_checked_container_is_routed_only_while_docker_calls_it_healthy(proxy, containers, warden):
    """Its server answers from the start, but its health check fails until a file
    exists: routed only once Docker calls it healthy, taken out when it turns unhealthy."""
    warden([WEB], **proxy.settings()).start()
    # A file name of this run's own: no other file can make the check pass.
    flag = f"/tmp/healthy-{RUN}-{time.monotonic_ns()}"
    checked = containers.run("web", healthcheck=health_check("test", "-f", flag))
    address = f"{ip_of(checked)}:8080"
    time.sleep(1)  # five failed checks, while its server answered
    assert address not in proxy.routes("web"), "routed before Docker called it healthy"
    checked.exec_run(f"touch {flag}")
    eventually(lambda: address in proxy.routes("web"), 5, what="routed once healthy")
    assert proxy.frontend("web.example.com") == "web"
    checked.exec_run(f"rm {flag}")
    eventually(lambda: address not in proxy.routes("web"), 5, what="unrouted once unhealthy")
    assert proxy.frontend("web.example.com") is None


def test_it_leaves_at_its_stop_before_it_dies_and_the_frontend_goes_with_the_last(proxy, containers, warden):
    warden([WEB], **proxy.settings()).start()
    one = containers.run("web")
    address = f"{ip_of(one)}:8080"
    eventually(lambda: address in proxy.routes("web"), 10, what="routed")
    one.kill(signal="SIGTERM")  # as `docker stop` begins; its PID 1 ignores it and runs on
    eventually(lambda: address not in proxy.routes("web"), 2, what="unrouted at the SIGTERM")
    one.reload()
    assert one.status == "running", "the test meant to see it leave before it died"
    assert proxy.frontend("web.example.com") is None


def test_the_sweep_leaves_what_warden_did_not_write(proxy, containers, warden):
    proxy.write_foreign_frontend("other.example.com", "api")
    warden([WEB], registrarSleepTimeSeconds=1, **proxy.settings()).start()
    one = containers.run("web")
    eventually(lambda: f"{ip_of(one)}:8080" in proxy.routes("web"), 10, what="routed")
    time.sleep(2.5)  # two sweeps
    assert proxy.frontend("other.example.com") == "api"


def test_a_store_restarted_empty_is_put_back_without_restarting_warden(proxy, containers, warden):
    w = warden([WEB], **proxy.settings()).start()
    one = containers.run("web")
    address = f"{ip_of(one)}:8080"
    eventually(lambda: address in proxy.routes("web"), 10, what="routed")
    proxy.restart_empty()
    eventually(lambda: address in proxy.routes("web") and proxy.frontend("web.example.com") == "web", 15,
               what="put back")
    assert w.process.poll() is None


class Load:
    """Requests through a proxy every 20 ms on a thread of its own; counts failures."""

    def __init__(self, proxy, host: str) -> None:
        import threading

        self.proxy, self.host = proxy, host
        self.ok = self.failed = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="load")

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                status, body = self.proxy.get(self.host)
            except OSError as error:
                status, body = 0, str(error)
            if status == 200:
                self.ok += 1
            else:
                self.failed += 1
                self.failures.append(f"{status} {body[:60]}")
            self.stop.wait(0.02)

    def __enter__(self) -> "Load":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def test_five_rolling_deploys_fail_no_request(served, redx, containers, warden):
    """Each deploy: a new container, served once ready; then the old one stopped with
    SIGTERM (its PID 1 ignores it: Docker kills it 2 s later). Taken out at the stop,
    before it dies, so no request fails."""
    warden([WEB], **served.settings()).start()
    old = containers.run("web")
    eventually(lambda: served.proxy.get("web.example.com")[0] == 200, 10, what="served")
    import threading

    stopping = []
    with Load(served.proxy, "web.example.com") as load:
        for _ in range(5):
            new = containers.run("web")
            address = f"{ip_of(new)}:8080"
            eventually(lambda: address in served.routes("web"), 10, what="the new one routed")
            time.sleep(served.settle)
            # `docker stop` waits out the 2 s before the kill: the next deploy goes on meanwhile.
            stopping.append(threading.Thread(target=old.stop, kwargs={"timeout": 2}))
            stopping[-1].start()
            old = new
        for thread in stopping:
            thread.join()
    assert load.ok > 100 and load.failed == 0, (load.ok, load.failures[:5])


def test_a_kill_beside_a_healthy_replica_fails_at_most_one_request(served, redx, containers, warden):
    warden([WEB], **served.settings()).start()
    containers.run("web")  # the healthy replica
    doomed = containers.run("web")
    eventually(lambda: len(served.routes("web")) == 2, 10, what="both routed")
    time.sleep(served.settle)
    with Load(served.proxy, "web.example.com") as load:
        time.sleep(1)
        doomed.kill()
        time.sleep(2)
    assert load.ok > 50 and load.failed <= 1, (load.ok, load.failures[:5])


@pytest.mark.parametrize("starter", sorted(STARTERS))
def test_three_slow_starters_join_a_live_service_and_no_request_fails(starter, served, redx, containers, warden):
    """Each slow starter answers 1.5 s after its start: none is routed before it does."""
    warden([WEB], **served.settings()).start()
    containers.run("web")
    eventually(lambda: served.proxy.get("web.example.com")[0] == 200, 10, what="served")
    time.sleep(served.settle)
    with Load(served.proxy, "web.example.com") as load:
        slow = [containers.run("web", **STARTERS[starter]) for _ in range(3)]
        eventually(lambda: {f"{ip_of(c)}:8080" for c in slow} <= served.routes("web"), 15, what="all three routed")
        time.sleep(1)
    assert load.ok > 50 and load.failed == 0, (load.ok, load.failures[:5])
