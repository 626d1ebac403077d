"""The chaos suite: faults injected while containers churn and managers scale, then,
once quiet, the invariants a user relies on:

- the Redx routes equal the running healthy containers;
- exactly one leader, and the task count equals what the metric asks for;
- no task carries an epoch that was never a leader's;
- no Warden process crashed.

Each scenario prints what it injected and how long convergence took; the suite prints
totals at the end. Short lease and guard times keep it within a few minutes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from conftest import ROOT, RUN, eventually, ip_of

pytestmark = pytest.mark.chaos

TOTALS = {"scenarios": 0, "faults": 0, "survived": 0, "unrouted": 0, "stale": 0, "samples": 0}


@pytest.fixture(scope="module", autouse=True)
def report_totals():
    yield
    print(f"\nchaos totals: {TOTALS['scenarios']} scenarios, {TOTALS['faults']} faults injected, "
          f"{TOTALS['survived']} survived; over {TOTALS['samples']} route samples, "
          f"{TOTALS['unrouted']} moments a running container had no route and "
          f"{TOTALS['stale']} moments a route outlived its container (past {RouteSampler.grace}s)")


class RouteSampler:
    """Samples the routes *during* a scenario, every ``interval`` seconds: each moment a
    running, ready container of the web service has had no route for longer than
    ``grace`` (the time an event takes to land), and each moment a route has pointed at
    no running container for that long. A container that was sent a stop signal (a
    ``kill`` or ``stop`` event, as when the engine shuts down) is not ready: Warden
    unroutes it on purpose before it dies. Samples the engine or Redis could not answer
    (the fault itself) are counted apart."""

    interval = 0.1
    grace = 1.0

    def __init__(self, docker_client: Any, redx_port: int) -> None:
        self.docker = docker_client
        self.redx = redis_lib.Redis(port=redx_port, decode_responses=True, socket_timeout=0.5,
                                    socket_connect_timeout=0.5)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="route-sampler")
        self.watcher = threading.Thread(target=self.watch_stops, name="route-sampler-events")
        #: ids of containers sent a stop signal, until they die or start again
        self.stopping: set = set()
        self._stream: Any = None
        self.samples = self.unrouted = self.stale = self.unobservable = 0
        self._unrouted_since: dict[str, float] = {}
        self._stale_since: dict[str, float] = {}

    def watch_stops(self) -> None:
        since = time.time()
        while not self.stop.is_set():
            try:
                self._stream = self.docker.api.events(
                    since=since, decode=True,
                    filters={"type": "container", "event": ["kill", "stop", "die", "start"]})
                for event in self._stream:
                    since = event.get("time", since)
                    cid, action = event["Actor"]["ID"], event["Action"]
                    if action in ("kill", "stop"):
                        self.stopping.add(cid)
                    else:
                        self.stopping.discard(cid)
            except Exception:  # noqa: BLE001 - the engine restarts on purpose
                self.stop.wait(0.2)

    def running(self) -> set:
        found = set()
        for entry in self.docker.api.containers(filters={"label": f"warden.test={RUN}"}):
            if entry["Id"] in self.stopping:
                continue
            if entry["Names"][0].lstrip("/").startswith(f"wt-{RUN}-web") and entry["State"] == "running":
                address = (entry["NetworkSettings"]["Networks"].get("bridge") or {}).get("IPAddress")
                if address:
                    found.add(f"{address}:8080")
        return found

    def sample(self) -> None:
        try:
            running, routes = self.running(), set(self.redx.hgetall("backend:web"))
        except Exception:  # noqa: BLE001 - the engine or Redis is down on purpose
            self.unobservable += 1
            return
        now = time.monotonic()
        self.samples += 1
        for since, missing, counter in ((self._unrouted_since, running - routes, "unrouted"),
                                        (self._stale_since, routes - running, "stale")):
            for address in list(since):
                if address not in missing:
                    del since[address]
            for address in missing:
                if now - since.setdefault(address, now) > self.grace:
                    setattr(self, counter, getattr(self, counter) + 1)

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "RouteSampler":
        self.watcher.start()
        self.thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        if self._stream is not None:
            self._stream.close()
        self.thread.join(10)
        self.watcher.join(10)

    def __exit__(self, *exc: Any) -> None:
        self.finish()
        self.redx.close()


class Churn:
    """Starts and removes containers of the web service in the background."""

    def __init__(self, containers: Any) -> None:
        self.containers = containers
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="churn")
        self.made = 0

    def run(self) -> None:
        alive: list = []
        while not self.stop.is_set():
            try:
                if len(alive) < 4:
                    alive.append(self.containers.run("web"))
                    self.made += 1
                else:
                    alive.pop(0).remove(force=True)
            except Exception:  # noqa: BLE001 - the engine may be down on purpose
                self.stop.wait(0.5)
            self.stop.wait(0.2)

    def __enter__(self) -> "Churn":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(60)


def _cluster(central: Any, central_settings: dict, redx, redx_server, containers, ecs, warden, managers,
             aws_proxy, docker_client):
    """One `warden run` host and two more `warden manager` instances, a web service
    routed here and a worker service scaled from a Redis metric on moto's ECS through a
    fault proxy; ``central_settings`` point them at the central Redis."""
    proxy, proxy_url = aws_proxy, aws_proxy.url
    central.set("demand:worker", "12")
    services = [
        {"name": "web", "containerName": f"wt-{RUN}-web", "port": 8080,
         "loadBalancerUrl": "web.example.com"},
        {"name": "worker", "port": 80, "taskName": ecs.task_family, "cluster": ecs.name,
         "metric": {"type": "redis", "key": "demand:worker"},
         "scaling": {"steps": [[0, 1], [10, 3], [50, 5]], "scaleDownDelaySeconds": 0},
         "runTask": {"launchType": "FARGATE", "networkConfiguration": ecs.awsvpc}},
    ]
    settings = dict(central_settings, zoneCheck="none", leaseSeconds=2, guardTimeSeconds=0.5,
                    heartbeatIntervalSeconds=0.5, managerSleepTimeSeconds=2,
                    registrarSleepTimeSeconds=5, handlers=["redx", "ecs"])
    host = warden(services, **settings)
    host.env.update(WARDEN_INSTANCE_ID="i-host", AWS_ENDPOINT_URL=proxy_url)
    host.start("run")
    others = []
    for name in ("i-b", "i-c"):
        m = managers(name, start=False, services=services,
                     **{k: v for k, v in settings.items() if k != "serviceManagementRedisAddress"})
        m.env["AWS_ENDPOINT_URL"] = proxy_url
        m.start("manager")
        others.append(m)

    class Cluster:
        pass

    c = Cluster()
    c.host, c.managers, c.proxy, c.central, c.redx, c.ecs = host, others, proxy, central, redx, ecs
    c.containers, c.docker = containers, docker_client
    c.all = [host, *others]
    eventually(lambda: worker_tasks(ecs) == 3, 30, what="the first scaling")
    c.sampler = RouteSampler(docker_client, redx_server.port)
    return c


@pytest.fixture
def cluster(redx, redx_server, central, central_server, containers, ecs, warden, managers, aws_proxy,
            docker_client):
    """The chaos cluster on a standalone central Redis."""
    c = _cluster(central, {"serviceManagementRedisAddress": f"127.0.0.1:{central_server.port}"},
                 redx, redx_server, containers, ecs, warden, managers, aws_proxy, docker_client)
    with c.sampler:
        yield c


@pytest.fixture
def sentinel_cluster(redx, redx_server, sentinel_central, containers, ecs, warden, managers, aws_proxy,
                     docker_client):
    """The chaos cluster on a central Redis under Sentinel (a primary, a replica)."""
    c = _cluster(sentinel_central.client(), sentinel_central.settings(),
                 redx, redx_server, containers, ecs, warden, managers, aws_proxy, docker_client)
    c.sentinels = sentinel_central
    with c.sampler:
        yield c


@pytest.fixture
def proxied_cluster(redx, redx_server, central, central_server, containers, ecs, warden, managers, aws_proxy,
                    docker_client, tcp_proxy):
    """The chaos cluster reaching its standalone central Redis through a TCP proxy of
    the test's own (``c.central_proxy``), which can turn the server silent."""
    proxy = tcp_proxy(central_server.port)
    c = _cluster(central, {"serviceManagementRedisAddress": f"127.0.0.1:{proxy.port}"},
                 redx, redx_server, containers, ecs, warden, managers, aws_proxy, docker_client)
    c.central_proxy = proxy
    with c.sampler:
        yield c


def worker_tasks(ecs: Any) -> int:
    return sum(1 for t in ecs.tasks() if t["startedBy"] == "warden")


def expected_routes(c: Any) -> set:
    found = set()
    for container in c.docker.containers.list(filters={"label": f"warden.test={RUN}"}):
        if container.name.startswith(f"wt-{RUN}-web") and container.status == "running":
            found.add(f"{ip_of(container)}:8080")
    return found


def holders(c: Any) -> list:
    """The processes whose current run's log says they lead now."""
    leading = []
    for m in c.all:
        if m.process is None:
            continue
        log = m.log().rsplit("manager started as", 1)[-1]
        if log.count("leadership gained: epoch") > log.count("leadership lost (epoch"):
            leading.append(m)
    return leading


def check_invariants(c: Any, scenario: str, injected: str, started: float) -> None:
    """Wait for quiet, then assert every invariant; print the convergence time."""
    state: dict = {}

    def converged() -> bool:
        state.update(routes=set(c.redx.hgetall("backend:web")) == expected_routes(c),
                     leader=c.central.hget("service-manager", "id"),
                     holders=[m.env["WARDEN_INSTANCE_ID"] for m in holders(c)],
                     tasks=worker_tasks(c.ecs))
        return (state["routes"] and state["leader"] is not None
                and len(state["holders"]) == 1 and state["tasks"] == 3)

    try:
        eventually(converged, 60, interval=0.2, what=f"convergence after {scenario}")
    except AssertionError as error:
        logs = "\n".join(f"--- {m.env['WARDEN_INSTANCE_ID']} ---\n"
                          + "\n".join(line for line in m.log().splitlines()
                                      if "leadership" in line or "started as" in line)[-3000:]
                          for m in c.all)
        raise AssertionError(f"{error}; last state {state}\n{logs}") from None
    took = time.monotonic() - started
    sampler = c.sampler
    sampler.finish()  # the scenario is over: what was sampled during it is the report
    assert holders(c)[0].env["WARDEN_INSTANCE_ID"] == c.central.hget("service-manager", "id")
    epochs = {int(e) for m in c.all for e in re.findall(r"leadership gained: epoch (\d+)", m.log())}
    for task in c.ecs.tasks():
        tags = {t["key"]: t["value"] for t in task.get("tags") or []}
        if task["startedBy"] == "warden":
            assert int(tags["warden:epoch"]) in epochs, "a task started under an epoch no leader held"
    for m in c.all:
        assert m.process is None or m.process.poll() is None, f"{m.folder.name} crashed:\n{m.log()[-2000:]}"
    TOTALS["scenarios"] += 1
    TOTALS["survived"] += 1
    for key in ("unrouted", "stale", "samples"):
        TOTALS[key] += getattr(sampler, key)
    print(f"\nchaos: {scenario}: injected {injected}; converged in {took:.1f}s; sampled "
          f"{sampler.samples} times ({sampler.unobservable} unobservable): a running container "
          f"unrouted at {sampler.unrouted} samples, a route without its container at "
          f"{sampler.stale}")


def test_docker_engine_restarted_while_containers_churn(cluster):
    c = cluster
    with Churn(c.containers):
        time.sleep(2)
        pid = int(Path("/var/run/docker.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        started = time.monotonic()
        try:
            eventually(lambda: not Path(f"/proc/{pid}").exists()
                       or Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
                       60, what="the engine to exit")
        finally:
            subprocess.run(["bash", str(ROOT / "scripts" / "start-dockerd.sh")], check=True)
        time.sleep(2)
    TOTALS["faults"] += 1
    check_invariants(c, "Docker restart", "dockerd SIGTERM and start while churning", started)


def test_redx_redis_flushed_and_restarted(cluster, redx_server):
    c = cluster
    with Churn(c.containers):
        time.sleep(1.5)
        started = time.monotonic()
        c.redx.flushall()
        time.sleep(1.5)
        redx_server.restart()
        c.redx = redx_server.client()
        time.sleep(1)
    TOTALS["faults"] += 2
    check_invariants(c, "Redx Redis", "FLUSHALL, then a restart", started)


def test_central_redis_restarted_under_the_managers(cluster, central_server):
    c = cluster
    with Churn(c.containers):
        time.sleep(1)
        started = time.monotonic()
        central_server.restart()
        c.central = redis_lib.Redis(port=central_server.port, db=11, decode_responses=True)
        c.central.set("demand:worker", "12")
        time.sleep(1)
    TOTALS["faults"] += 1
    check_invariants(c, "central Redis", "a restart (keys lost, metric set again)", started)


def test_central_primary_killed_under_sentinel(sentinel_cluster):
    """kill -9 of the central Redis primary while containers churn and the leader
    scales: Sentinel promotes the replica, and the cluster converges on it with one
    leader, under an epoch no lower than any before."""
    c = sentinel_cluster
    epochs_before = {int(e) for m in c.all for e in re.findall(r"leadership gained: epoch (\d+)", m.log())}
    with Churn(c.containers):
        time.sleep(1)
        c.central.set("demand:worker", "60")  # the leader scales up as the primary dies
        time.sleep(0.2)
        started = time.monotonic()
        old = c.sentinels.kill_primary()
        eventually(lambda: c.sentinels.primary() is not old, 30, what="Sentinel's failover")
        # A write the old primary had not passed on may be lost with it.
        eventually(lambda: c.central.set("demand:worker", "12"), 10, what="the new primary")
        c.sentinels.restart_as_replica(old)
        time.sleep(1)
    TOTALS["faults"] += 1
    check_invariants(c, "central primary under Sentinel", "kill -9 of the primary while scaling", started)
    now = int(c.central.hget("service-manager", "epoch"))
    assert now >= max(epochs_before)


def test_leaders_killed_and_frozen_repeatedly(cluster):
    c = cluster
    started = time.monotonic()
    with Churn(c.containers):
        for round_ in range(4):
            chief = eventually(lambda: c.central.hget("service-manager", "id"), 20, what="a leader")
            victim = next(m for m in c.all if m.env["WARDEN_INSTANCE_ID"] == chief)
            if round_ % 2 == 0:
                victim.process.kill()
                victim.process.wait()
                victim.log_file.close()
                victim.process = None
                eventually(lambda: c.central.hget("service-manager", "id") not in (None, chief), 20,
                           what="failover after kill -9")
                victim.start("run" if victim is c.host else "manager")
            else:
                victim.process.send_signal(signal.SIGSTOP)
                eventually(lambda: c.central.hget("service-manager", "id") not in (None, chief), 20,
                           what="failover after SIGSTOP")
                victim.process.send_signal(signal.SIGCONT)
            TOTALS["faults"] += 1
    check_invariants(c, "leaders", "kill -9 twice and SIGSTOP/SIGCONT twice", started)


def test_aws_throttling_errors_and_stalls(cluster):
    c = cluster
    started = time.monotonic()
    with Churn(c.containers):
        for mode in ("throttle", "503", "stall"):
            c.proxy.mode = mode
            c.central.set("demand:worker", "60")
            c.central.publish("warden:metric", "worker")
            time.sleep(3)
            TOTALS["faults"] += 1
        c.proxy.mode = "pass"
        c.central.set("demand:worker", "12")
        c.central.publish("warden:metric", "worker")
    assert c.proxy.faults > 0
    check_invariants(c, "AWS endpoint", f"throttling, 503s and stalls ({c.proxy.faults} calls)", started)


def test_a_burst_of_100_starts_and_kills(cluster):
    from concurrent.futures import ThreadPoolExecutor

    c = cluster
    started = time.monotonic()
    with ThreadPoolExecutor(10) as pool:
        made = list(pool.map(lambda _: c.containers.run("web"), range(50)))
        list(pool.map(lambda x: x.kill(), made[::2]))
        made += list(pool.map(lambda _: c.containers.run("web"), range(50)))
        list(pool.map(lambda x: x.remove(force=True), made[1::4]))
    TOTALS["faults"] += 1
    check_invariants(c, "burst", "100 starts and 50 kills/removals", started)


def test_a_storm_of_malformed_and_forged_control_messages(cluster, central_server):
    c = cluster
    pub = redis_lib.Redis(port=central_server.port)
    started = time.monotonic()
    with Churn(c.containers):
        for n in range(300):
            channel = ("warden:kill", "warden:election", "warden:heartbeat", "warden:drain", "warden:metric")[n % 5]
            payload = (b"\xff garbage", b"{}", json.dumps({"type": "kill", "instanceId": "i-host", "az": "",
                                                          "epoch": 1, "ts": time.time()}).encode(),
                       json.dumps({"type": "drain", "instanceId": "i-nobody", "az": "", "epoch": 0,
                                   "ts": time.time()}).encode(), b"x" * 100_000)[n % 5]
            pub.publish(channel, payload)
    pub.close()
    TOTALS["faults"] += 1
    check_invariants(c, "control messages", "300 malformed and forged messages", started)


def subscribed(c: Any) -> bool:
    """Every Warden process holds its liveness subscription on the central Redis."""
    ids = [m.env["WARDEN_INSTANCE_ID"] for m in c.all]
    return all(n == 1 for _, n in c.central.pubsub_numsub(*[f"warden:alive:{i}" for i in ids]))


def test_a_central_redis_gone_silent_behind_a_black_hole(proxied_cluster):
    """The central Redis vanishes without a word while containers churn and the leader
    scales: every connection open through the proxy is reset and every one opened in
    the next 8 s stays open and silent for ever. Loss figures: routes lose nothing (the
    Registrar never needs the central Redis), and every process is subscribed again
    within 6 s of the silence lifting."""
    c = proxied_cluster
    eventually(lambda: subscribed(c), 10, what="every process subscribed")
    with Churn(c.containers):
        time.sleep(1)
        c.central.set("demand:worker", "60")
        started = time.monotonic()
        c.central_proxy.black_hole(8, reset_open=True)
        time.sleep(8)
        back = eventually(lambda: subscribed(c) and time.monotonic(), 15, interval=0.05,
                          what="every process subscribed again after the silence")
        c.central.set("demand:worker", "12")
        c.central.publish("warden:metric", "worker")
        time.sleep(1)
    TOTALS["faults"] += 1
    resubscribed = back - started - 8
    print(f"\nblack hole: {c.central_proxy.silenced} connections silenced; every process subscribed "
          f"again {resubscribed:.2f} s after the silence lifted")
    check_invariants(c, "central Redis black hole", "8 s of silence on every connection", started)
    assert resubscribed < 6, f"subscribed again only {resubscribed:.2f} s after the silence lifted"
    assert c.sampler.unrouted == 0 and c.sampler.stale == 0, \
        f"routes lost to a central-Redis fault: {c.sampler.unrouted} unrouted, {c.sampler.stale} stale"


def test_a_stalled_replica_holds_every_action_until_it_acknowledges(sentinel_cluster):
    """The central replica stalls (SIGSTOP: attached, acknowledging nothing) while the
    demand rises: the leader may not act on writes a failover could lose. Loss figure:
    no RunTask reaches ECS while it stalls; once it answers, the count is reached."""
    c = sentinel_cluster
    replica = next(s for s in c.sentinels.servers if s is not c.sentinels.primary())
    with Churn(c.containers):
        time.sleep(1)
        calls = len(c.proxy.made("RunTask"))
        started = time.monotonic()
        replica.process.send_signal(signal.SIGSTOP)
        try:
            time.sleep(1.5)
            c.central.set("demand:worker", "60")
            c.central.publish("warden:metric", "worker")
            time.sleep(4)
            during = len(c.proxy.made("RunTask")) - calls
            running = worker_tasks(c.ecs)
        finally:
            replica.process.send_signal(signal.SIGCONT)
        c.sentinels.wait_replicated()
        eventually(lambda: worker_tasks(c.ecs) == 5, 30, what="the count reached once the replica answers")
        c.central.set("demand:worker", "12")
        c.central.publish("warden:metric", "worker")
    TOTALS["faults"] += 1
    print(f"\nstalled replica: {during} RunTask calls while it stalled ({running} tasks running)")
    assert during == 0 and running == 3, f"{during} RunTask calls while no replica acknowledged"
    assert any("holding every action on the cluster" in m.log() for m in c.all)
    check_invariants(c, "stalled central replica", "SIGSTOP of the replica for 5.5 s", started)
