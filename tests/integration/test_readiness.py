"""Readiness: a container without a Docker health check is routed only once it answers
on its own address and port. Real Docker, a real Redx Redis and real ``warden``
processes; the moment a route appears is taken from keyspace notifications."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

from conftest import RUN, eventually, free_port, ip_of

#: a server on port 8080 that starts listening 1.5 s after the container starts
LATE = "sh -c 'sleep 1.5; httpd -p 8080 -h /www; exec sleep 600'"
#: a container that never listens
SILENT = "sleep 600"
#: a server that listens only 8 s after the container starts
LATER = "sh -c 'sleep 8; httpd -p 8080 -h /www; exec sleep 600'"


def service(name: str, **fields: object) -> dict:
    base = {"name": name, "containerName": f"wt-{RUN}-{name}", "port": 8080,
            "loadBalancerUrl": f"{name}.example.com"}
    base.update(fields)
    return base


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class FirstServer:
    """Waits for the first server written to ``backend:<name>`` and, at that moment,
    tries it (a TCP connect, or ``check(host, port)``): what the first request through
    Redx would meet."""

    def __init__(self, redx, backend: str, check=None) -> None:
        self.check = check or answers
        redx.config_set("notify-keyspace-events", "Kh")
        self.redx = redx
        self.pubsub = redx.pubsub()
        self.pubsub.subscribe(f"__keyspace@0__:backend:{backend}")
        self.pubsub.get_message(timeout=1)  # the subscribe confirmation
        self.key = f"backend:{backend}"
        self.address = ""
        self.at = 0.0
        self.answered = None
        self.thread = threading.Thread(target=self._watch, name="test-first-server")
        self.thread.start()

    def _watch(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.5)
            if message and message["data"] == "hset":
                self.at = time.monotonic()
                self.address = next(iter(self.redx.hkeys(self.key)), "")
                host, _, port = self.address.rpartition(":")
                self.answered = self.check(host, int(port))
                return

    def wait(self) -> "FirstServer":
        self.thread.join(25)
        self.pubsub.close()
        self.redx.config_set("notify-keyspace-events", "")
        assert self.address, f"no server was written to {self.key}"
        return self


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def test_a_container_is_routed_once_it_accepts_connections_not_at_start(redx, containers, warden):
    warden([service("late")]).start()
    first = FirstServer(redx, "late")
    started = time.monotonic()
    c = containers.run("late", command=LATE)
    first.wait()
    assert first.address == f"{ip_of(c)}:8080"
    assert first.answered, "the route appeared before the container accepted connections"
    assert first.at - started >= 1.4, f"routed {first.at - started:.2f} s after start"
    assert redx.get("frontend:late.example.com") == "late"


def test_readiness_none_routes_at_start(redx, containers, warden):
    warden([service("eager", readiness="none")]).start()
    first = FirstServer(redx, "eager")
    started = time.monotonic()
    c = containers.run("eager", command=LATE)
    first.wait()
    assert first.address == f"{ip_of(c)}:8080"
    assert first.answered is False, "with readiness none the route comes before the server"
    assert first.at - started < 1.4


def test_a_published_port_is_probed_on_the_containers_own_address(redx, containers, warden):
    """The engine's proxy accepts on the host port at once; the probe must not be fooled."""
    warden([service("pub", publishedPort=True)], hostAddress="127.0.0.1").start()
    first = FirstServer(redx, "pub")
    started = time.monotonic()
    c = containers.run("pub", command=LATE, ports={"8080/tcp": None})
    c.reload()
    host_port = c.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"]
    assert time.monotonic() - started < 1.2 and answers("127.0.0.1", int(host_port)), \
        "the proxy should accept on the host port before the container listens"
    first.wait()
    assert first.address == f"127.0.0.1:{host_port}"
    assert answers(ip_of(c), 8080)
    assert first.at - started >= 1.4, f"routed {first.at - started:.2f} s after start"


#: a CGI at /cgi-bin/ready that answers 503 for the container's first 2 s, then 200
#: (no ``docker exec``: where the engine runs chrooted, exec may run outside)
HTTP_READY = ("sh -c 'mkdir -p /w/cgi-bin; printf \"#!/bin/sh\\nif test -f /tmp/ok; "
              "then echo Status: 200 OK; else echo Status: 503 Not yet; fi\\necho\\necho x\\n\" "
              "> /w/cgi-bin/ready; busybox chmod +x /w/cgi-bin/ready; httpd -p 8080 -h /w; "
              "(sleep 2; touch /tmp/ok) & exec sleep 600'")


def status_of(host: str, port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/cgi-bin/ready", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def test_http_readiness_waits_for_an_answer_below_500(redx, containers, warden):
    warden([service("web", readiness={"http": "/cgi-bin/ready"})]).start()
    first = FirstServer(redx, "web", check=status_of)
    c = containers.run("web", command=HTTP_READY)
    eventually(lambda: status_of(ip_of(c), 8080) == 503, 2, what="the server answering 503")
    time.sleep(0.5)
    assert status_of(ip_of(c), 8080) == 503
    assert redx.hgetall("backend:web") == {}, "a 503 is not ready"
    assert redx.get("frontend:web.example.com") is None
    first.wait()
    assert first.address == f"{ip_of(c)}:8080"
    assert first.answered == 200, f"routed while the server answered {first.answered}"


def test_a_container_that_never_answers_stays_unrouted_and_is_reported(redx, containers, warden):
    port = free_port()
    w = warden([service("mute")], readinessReportSeconds=1, registrarSleepTimeSeconds=0.5,
               metricsAddress=f"127.0.0.1:{port}").start()
    mute = containers.run("mute", command=LATER)
    other = containers.run("mute", command=SILENT)
    started = time.monotonic()
    eventually(lambda: w.log().count("no answer for") >= 2, 5, what="both reported")
    eventually(lambda: w.log().count("sweep (periodic)") >= 2, 5, what="sweeps")
    assert redx.hgetall("backend:mute") == {}, "a sweep never routes an unanswered container"
    assert redx.get("frontend:mute.example.com") is None
    assert w.command("sweep", "--dry-run", check=True).stdout == ""
    assert w.log().count(f"TCP {ip_of(mute)}:8080 of container {mute.name}: no answer") == 1, \
        "logged once"
    assert metric(port, "warden_containers_reported_not_ready_total") == 2
    assert metric(port, "warden_containers_not_ready") == 2
    report = json.loads(w.command("status", "--json", check=True).stdout)
    [entry] = [s for s in report["services"] if s["name"] == "mute"]
    assert sorted(c["ready"] for c in entry["containers"]) == [False, False]
    assert "2 (2 not ready)" in w.command("status", check=True).stdout
    assert time.monotonic() - started < 7.5, "the checks above took too long to mean anything"
    # It starts listening: routed; the other is stopped: its probe ends with it.
    eventually(lambda: f"{ip_of(mute)}:8080" in redx.hgetall("backend:mute"), 10, what="routed")
    assert redx.get("frontend:mute.example.com") == "mute"
    other.kill()
    eventually(lambda: metric(port, "warden_containers_not_ready") == 0, 3, what="none waiting")
    assert metric(port, "warden_containers_reported_not_ready_total") == 2
    assert "not ready" not in w.command("status", check=True).stdout


def test_restarting_warden_never_unroutes_a_container_that_answers(redx, containers, warden):
    c = containers.run("web")
    w = warden([service("web")]).start()
    address = f"{ip_of(c)}:8080"
    assert address in redx.hgetall("backend:web")
    assert w.stop() == 0
    redx.config_set("notify-keyspace-events", "Kgh")
    watch = redx.pubsub()
    watch.psubscribe("__keyspace@0__:*end:web*")
    try:
        w.start()
        time.sleep(0.5)
        changes = []
        while (message := watch.get_message(timeout=0.1)) is not None:
            if message["type"] == "pmessage":
                changes.append(message["data"])
    finally:
        watch.close()
        redx.config_set("notify-keyspace-events", "")
    assert changes == [], f"the restart changed the routes: {changes}"
    assert redx.hgetall("backend:web") == {address: "0"}


def test_a_readiness_path_outside_ascii_is_probed_percent_encoded(redx, containers, warden):
    """``{"http": "/santé"}`` passed validation and then made every probe try raise in
    the worker: the container was never routed nor reported. The path is sent
    percent-encoded, from a service field or a label alike."""
    w = warden([service("accent", readiness={"http": "/santé"})], labelFrontends=["cafe.example.com"]).start()
    assert w.command("validate").returncode == 0
    c = containers.run("accent")
    eventually(lambda: redx.hgetall("backend:accent") == {f"{ip_of(c)}:8080": "0"}, 10, what="routed")
    labelled = containers.run("cafe", labels={"warden.service": f"cafe-{RUN}", "warden.frontend": "cafe.example.com",
                                              "warden.port": "8080", "warden.readiness": "http:/café?ü=1"})
    eventually(lambda: redx.hgetall(f"backend:cafe-{RUN}") == {f"{ip_of(labelled)}:8080": "0"}, 10,
               what="the labelled container routed")
    assert "Traceback" not in w.log() and "UnicodeEncodeError" not in w.log()


def test_a_probe_try_that_raises_counts_as_a_failed_try():
    """Whatever goes wrong inside one try, the probe stays scheduled: it fails, it is
    tried again, and it is reported, never left pending with nothing due."""
    from warden.registrar.readiness import Probe, ReadinessProber

    ready = []
    prober = ReadinessProber(ready.append, report_after=0.2)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        # A path http.client cannot encode: each try raises UnicodeEncodeError.
        probe = Probe("c1", "127.0.0.1", listener.getsockname()[1], "/santé", "c1")
        assert prober.require(probe) is False
        eventually(lambda: prober.not_ready() == [probe], 5, what="the probe reported as not ready")
    finally:
        prober.stop()
        listener.close()
    assert ready == []


#: a server on port 8080 that answers every connection with one header byte every 0.8 s,
#: for ever (busybox nc runs the script for each connection)
TRICKLE = ("sh -c 'echo \"while true; do printf H; sleep 0.8; done\" > /tmp/t.sh; "
           "exec busybox nc -ll -p 8080 -e sh /tmp/t.sh'")


def test_trickling_servers_cannot_stall_another_services_probes(redx, containers, warden):
    """An HTTP probe's timeout was per socket operation, and 4 workers probed: four
    containers sending one header byte every 0.8 s held every worker for ever, and no
    container that did not listen at its first glance was routed again."""
    slow = service("slow", readiness={"http": "/"})
    web = service("web", readiness={"http": "/"})
    w = warden([slow, web]).start()
    tricklers = [containers.run("slow", command=TRICKLE) for _ in range(5)]
    time.sleep(1.5)  # every trickler's probe under way
    late = containers.run("web", command=LATE)
    eventually(lambda: f"{ip_of(late)}:8080" in redx.hgetall("backend:web"), 10,
               what="a late listener routed beside trickling servers")
    assert redx.hgetall("backend:slow") == {}, "a server that never finishes its status line was routed"
    assert all(ip_of(t) for t in tricklers) and w
