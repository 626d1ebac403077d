"""The Registrar end to end: a real ``warden registrar`` process, a real Docker engine
and a real Redx Redis; routes are checked in Redis, never by connecting."""

from __future__ import annotations

import json
import os
import time

from conftest import RUN, eventually, ip_of


def service(name: str, **fields: object) -> dict:
    base = {"name": name, "containerName": f"wt-{RUN}-{name}", "port": 8080,
            "loadBalancerUrl": f"{name}.example.com", "site": ""}
    base.update(fields)
    return base


def servers(redx, backend: str) -> dict:
    return redx.hgetall(f"backend:{backend}")


def test_running_container_is_routed_at_start_up_and_new_ones_at_once(redx, containers, warden):
    before = containers.run("web")
    w = warden([service("web")]).start()
    assert redx.get("frontend:web.example.com") == "web"
    assert servers(redx, "web") == {f"{ip_of(before)}:8080": "0"}
    after = containers.run("web")
    eventually(lambda: f"{ip_of(after)}:8080" in servers(redx, "web"), 5, what="new route")
    assert "+ backend:web " + f"{ip_of(after)}:8080" in w.log()


def test_stop_unroutes_before_the_container_dies(redx, containers, warden, docker_client):
    # sleep as PID 1 ignores SIGTERM, so `docker stop` leaves it running for the
    # whole timeout: the route must go at the kill, not at the die.
    c = containers.run("web")
    warden([service("web")]).start()
    address = f"{ip_of(c)}:8080"
    eventually(lambda: address in servers(redx, "web"), 5, what="route")
    import threading

    stopper = threading.Thread(target=lambda: c.stop(timeout=4))
    stopper.start()
    eventually(lambda: address not in servers(redx, "web"), 2, what="route removed")
    c.reload()
    assert c.status == "running", "the route should go while the container still runs"
    stopper.join()


def test_sighup_kill_changes_nothing(redx, containers, warden):
    c = containers.run("web")
    w = warden([service("web")]).start()
    address = f"{ip_of(c)}:8080"
    c.kill(signal="SIGHUP")
    # Events are handled in order: once a later container is routed, the kill was seen.
    later = containers.run("web")
    eventually(lambda: f"{ip_of(later)}:8080" in servers(redx, "web"), 5, what="a later event handled")
    assert "docker event container kill" in w.log()
    assert address in servers(redx, "web")


def test_label_beats_image_and_name_matching(redx, containers, warden):
    # Both services' containerName match this container's name, but the label says
    # it belongs to "api" only.
    labelled = containers.run("web", labels={"warden.service": "api"})
    by_image = containers.run("other")
    services = [service("web"), service("api", containerName="", port=9000, labelMembers="any"),
                service("img", containerName="warden-test", port=7000)]
    warden(services).start()
    assert servers(redx, "api") == {f"{ip_of(labelled)}:9000": "0"}
    assert servers(redx, "web") == {}
    # Image matching: both containers run warden-test, but the labelled one belongs
    # to "api" only.
    assert servers(redx, "img") == {f"{ip_of(by_image)}:7000": "0"}


def test_one_container_can_serve_several_services(redx, containers, warden):
    c = containers.run("multi")
    warden([service("web", containerName=f"wt-{RUN}-multi"),
            service("admin", containerName=f"wt-{RUN}-multi", port=9090,
                    loadBalancerUrl="web.example.com", site="/admin/")]).start()
    assert servers(redx, "web") == {f"{ip_of(c)}:8080": "0"}
    assert servers(redx, "admin") == {f"{ip_of(c)}:9090": "0"}
    assert redx.get("frontend:web.example.com/admin/") == "admin"


def test_health_checked_container_is_routed_only_while_healthy(redx, containers, warden):
    w = warden([service("web")]).start()
    # A file name of this run's own: where `docker exec` misbehaves (a chrooted engine
    # may run it outside the container), no other file can make the check pass.
    flag = f"/tmp/healthy-{RUN}-{time.monotonic_ns()}"
    c = containers.run("web", command="sh -c 'sleep 600'", healthcheck={
        "test": ["CMD", "sh", "-c", f"test -f {flag}"], "interval": 200_000_000,
        "timeout": 1_000_000_000, "retries": 1, "start_period": 0})
    address = f"{ip_of(c)}:8080"
    # Events are handled in order: once a later container is routed, its start was.
    later = containers.run("web")
    eventually(lambda: f"{ip_of(later)}:8080" in servers(redx, "web"), 5, what="a later event handled")
    assert address not in servers(redx, "web"), "a starting container is not routed"
    c.exec_run(f"touch {flag}")
    eventually(lambda: address in servers(redx, "web"), 5, what="routed when healthy")
    c.exec_run(f"rm {flag}")
    eventually(lambda: address not in servers(redx, "web"), 5, what="unrouted when unhealthy")
    assert "health_status" in w.log()


def test_pause_unroutes_and_unpause_routes_again(redx, containers, warden):
    c = containers.run("web")
    warden([service("web")]).start()
    address = f"{ip_of(c)}:8080"
    c.pause()
    eventually(lambda: address not in servers(redx, "web"), 3, what="unrouted when paused")
    c.unpause()
    eventually(lambda: address in servers(redx, "web"), 3, what="routed when unpaused")


def test_network_and_published_port_choose_the_address(redx, containers, warden):
    net = containers.network("backend")
    on_net = containers.run("netsvc", network=net.name)
    elsewhere = containers.run("netsvc")
    published = containers.run("pubsvc", ports={"8080/tcp": None})
    w = warden([service("netsvc", network=net.name),
                service("pubsvc", publishedPort=True)], hostAddress="127.0.0.1").start()
    assert servers(redx, "netsvc") == {f"{ip_of(on_net, net.name)}:8080": "0"}
    assert "not attached to network" in w.log() and elsewhere.name in w.log()
    published.reload()
    host_port = published.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"]
    assert servers(redx, "pubsvc") == {f"127.0.0.1:{host_port}": "0"}
    published.remove(force=True)
    eventually(lambda: servers(redx, "pubsvc") == {}, 3, what="published route removed")


def test_only_owned_addresses_are_changed(redx, containers, warden):
    c = containers.run("web")
    redx.hset("backend:web", mapping={"_sticky": "1", "10.200.0.5:80": "0",
                                       "172.17.250.250:8080": "0"})
    redx.set("frontend:other.example.com", "someone-else")
    redx.hset("backend:someone-else", "172.17.0.200:80", "0")
    w = warden([service("web")]).start()
    assert servers(redx, "web") == {"_sticky": "1", "10.200.0.5:80": "0", f"{ip_of(c)}:8080": "0"}
    assert "- backend:web 172.17.250.250:8080" in w.log()
    assert redx.get("frontend:other.example.com") == "someone-else"
    assert servers(redx, "someone-else") == {"172.17.0.200:80": "0"}
    c.remove(force=True)
    eventually(lambda: servers(redx, "web") == {"_sticky": "1", "10.200.0.5:80": "0"}, 3,
               what="container route removed, static and config kept")


def test_churn_of_many_containers_ends_with_exact_routes(redx, containers, warden, docker_client):
    warden([service("web")]).start()
    started = [containers.run("web") for _ in range(12)]
    for c in started[::2]:
        c.remove(force=True)
    alive = {f"{ip_of(c)}:8080" for c in started[1::2]}
    eventually(lambda: set(servers(redx, "web")) == alive, 10, what="exact routes after churn")


def test_dry_run_prints_changes_and_writes_nothing(redx, containers, warden):
    c = containers.run("web")
    redx.hset("backend:web", "172.17.250.250:8080", "0")
    w = warden([service("web")])
    result = w.command("sweep", "--dry-run", check=True)
    address = f"{ip_of(c)}:8080"
    assert sorted(result.stdout.splitlines()) == sorted([
        "+ frontend:web.example.com web",
        f"+ backend:web {address}",
        "- backend:web 172.17.250.250:8080",
    ])
    assert redx.get("frontend:web.example.com") is None
    assert servers(redx, "web") == {"172.17.250.250:8080": "0"}
    result = w.command("sweep", check=True)
    assert sorted(result.stdout.splitlines()) == sorted([
        "+ frontend:web.example.com web", f"+ backend:web {address}",
        "- backend:web 172.17.250.250:8080"])
    assert servers(redx, "web") == {address: "0"}
    assert w.command("sweep", "--dry-run", check=True).stdout == ""


def test_sweep_survives_containers_vanishing_during_it(redx, containers, warden, docker_client):
    w = warden([service("web")])
    import threading

    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            c = containers.run("web")
            c.remove(force=True)

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        for _ in range(5):
            result = w.command("sweep")
            assert result.returncode == 0, result.stderr
    finally:
        stop.set()
        churner.join()


def test_flushed_and_restarted_redx_redis_is_refilled(redx, redx_server, containers, warden):
    c = containers.run("web")
    w = warden([service("web")]).start()
    address = f"{ip_of(c)}:8080"
    redx.flushall()
    eventually(lambda: servers(redx, "web") == {address: "0"}
               and redx.get("frontend:web.example.com") == "web", 5, what="refilled after flush")
    redx_server.restart()
    fresh = redx_server.client()
    eventually(lambda: fresh.hgetall("backend:web") == {address: "0"}, 10,
               what="refilled after restart")
    assert "sweeping" in w.log()


def test_hot_reload_adds_changes_and_survives_a_broken_file(redx, containers, warden):
    c = containers.run("web")
    api = containers.run("api")
    w = warden([service("web")]).start()
    w.write_services("api.json", service("api", port=9000))
    eventually(lambda: servers(redx, "api") == {f"{ip_of(api)}:9000": "0"}, 5, what="api routed")
    assert redx.get("frontend:api.example.com") == "api"
    w.write_services("api.json", '{"name": "api", "port": ')
    eventually(lambda: "api.json" in w.log() and "invalid JSON" in w.log(), 5, what="broken file logged")
    new_one = containers.run("api")
    eventually(lambda: f"{ip_of(new_one)}:9000" in servers(redx, "api"), 5,
               what="last good api config still routes")
    # Moving the site retires the old frontend key and the old backend's addresses.
    w.write_services("api.json", service("api", port=9000, backendName="api2"))
    eventually(lambda: redx.get("frontend:api.example.com") == "api2", 5, what="frontend moved")
    eventually(lambda: servers(redx, "api") == {}, 5, what="old backend emptied")
    (w.services_dir / "api.json").unlink()
    eventually(lambda: redx.get("frontend:api.example.com") is None and servers(redx, "api2") == {},
               5, what="removed service retired")
    assert servers(redx, "web") == {f"{ip_of(c)}:8080": "0"}


def test_sigterm_exits_zero(redx, warden):
    w = warden([service("web")]).start()
    assert w.stop() == 0
    assert "registrar stopped" in w.log()




def test_running_container_connected_to_the_service_network_is_routed(redx, containers, warden):
    net = containers.network("late")
    c = containers.run("late")
    warden([service("late", network=net.name)]).start()
    assert servers(redx, "late") == {}
    net.connect(c)
    eventually(lambda: servers(redx, "late") == {f"{ip_of(c, net.name)}:8080": "0"}, 5,
               what="routed once connected")
    net.disconnect(c)
    eventually(lambda: servers(redx, "late") == {}, 5, what="unrouted once disconnected")


# -- production conditions ------------------------------------------------------------


def test_same_tag_redeploy_keeps_the_old_containers_routed(redx, containers, warden, docker_client):
    """Defect 1: once a tag points at a new image, the listing names the old containers'
    image by ID; the sweep must still judge them by the reference they were made from."""
    from conftest import IMAGE, LABEL, SERVE

    repository = f"wt-redeploy-{RUN}"
    docker_client.images.get(IMAGE).tag(repository, "v1")
    old = docker_client.containers.run(f"{repository}:v1", SERVE, detach=True,
                                       name=f"wt-{RUN}-old-{time.monotonic_ns()}",
                                       labels={LABEL: RUN})
    try:
        w = warden([service("img", containerName=repository)], registrarSleepTimeSeconds=0.5).start()
        address = f"{ip_of(old)}:8080"
        assert servers(redx, "img") == {address: "0"}
        # The redeploy: the same tag now names another image.
        other = containers.run("builder")
        other.commit(repository=repository, tag="v1")
        listed = docker_client.api.containers(filters={"id": old.id})[0]["Image"]
        assert listed.startswith("sha256:"), f"the listing should name the image by ID: {listed}"
        sweeps = w.log().count("sweep (periodic)")
        eventually(lambda: w.log().count("sweep (periodic)") >= sweeps + 3, 10, what="three sweeps")
        assert servers(redx, "img") == {address: "0"}
        assert f"- backend:img {address}" not in w.log()
        assert w.command("sweep", "--dry-run", check=True).stdout == ""
    finally:
        old.remove(force=True)
        docker_client.images.remove(f"{repository}:v1", force=True)


def test_deleting_the_only_service_file_keeps_every_route(redx, containers, warden):
    """Defect 2: a missing file keeps the last good services; [] retires them."""
    c = containers.run("web")
    w = warden(None, serviceDescriptionFilename="services/services.json", registrarSleepTimeSeconds=0.5)
    path = w.write_services("services.json", [service("web")])
    w.start()
    address = f"{ip_of(c)}:8080"
    assert servers(redx, "web") == {address: "0"}
    path.unlink()
    eventually(lambda: "services.json: -: not found; keeping the 1 services in force" in w.log(), 5,
               what="the missing file logged")
    sweeps = w.log().count("sweep (periodic)")
    eventually(lambda: w.log().count("sweep (periodic)") >= sweeps + 2, 5, what="two sweeps")
    assert servers(redx, "web") == {address: "0"}
    assert redx.get("frontend:web.example.com") == "web"
    w.write_services("services.json", [])
    eventually(lambda: redx.get("frontend:web.example.com") is None and servers(redx, "web") == {},
               5, what="[] retires every service")


def test_a_non_atomic_replace_in_a_folder_never_flaps_routes(redx, containers, warden):
    """Defect 2: an editor's unlink-then-write is not a retirement; a file that stays
    gone is retired after about 2 s."""
    import threading

    c = containers.run("api")
    w = warden([service("web")])
    w.write_services("api.json", [service("api")])
    w.start()
    address = f"{ip_of(c)}:8080"
    assert servers(redx, "api") == {address: "0"}
    seen: list = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.append((redx.get("frontend:api.example.com"), address in servers(redx, "api")))
            stop.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        path = w.services_dir / "api.json"
        path.unlink()
        time.sleep(0.5)
        path.write_text(json.dumps([service("api")]))
        eventually(lambda: "looked at again after the grace time: back" in w.log(), 5,
                   what="the second look")
        time.sleep(0.5)  # the reload it asked for, had it retired anything
    finally:
        stop.set()
        sampler.join()
    assert seen and all(s == ("api", True) for s in seen), [s for s in seen if s != ("api", True)][:3]
    (w.services_dir / "api.json").unlink()
    started = time.monotonic()
    eventually(lambda: redx.get("frontend:api.example.com") is None, 6, what="retired once gone")
    assert time.monotonic() - started >= 1.5, "retired before the grace time"
    assert servers(redx, "api") == {}


def test_a_key_of_the_wrong_type_skips_its_own_service_only(redx, containers, warden):
    """Defect 3: one WRONGTYPE reply used to fail the whole sweep pipeline."""
    web = containers.run("web")
    containers.run("api")
    redx.set("backend:api", "not a hash")
    w = warden([service("web"), service("api")])
    result = w.command("sweep", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"+ backend:web {ip_of(web)}:8080" in result.stdout.splitlines()
    assert "backend:api cannot be reconciled" in result.stderr
    w.start()
    assert servers(redx, "web") == {f"{ip_of(web)}:8080": "0"}
    assert redx.get("frontend:web.example.com") == "web"
    assert redx.get("backend:api") == "not a hash"
    assert "backend:api cannot be reconciled (WRONGTYPE" in w.log()


def test_a_retirement_the_redx_redis_refused_is_done_at_the_next_sweep(redx, redx_server, containers,
                                                                      warden):
    """Defect 4: retiring a service while the Redx Redis fails used to be lost."""
    api = containers.run("api")
    w = warden([service("web")], registrarSleepTimeSeconds=1)
    w.write_services("api.json", [service("api")])
    w.start()
    address = f"{ip_of(api)}:8080"
    assert servers(redx, "api") == {address: "0"}
    # Every command waits 3 s, past the handler's 2 s socket timeout.
    redx.execute_command("CLIENT", "PAUSE", "3000", "ALL")
    w.write_services("api.json", [])
    eventually(lambda: "did not take a retirement" in w.log(), 10, what="the failed retirement")
    eventually(lambda: redx.get("frontend:api.example.com") is None and servers(redx, "api") == {},
               10, what="the retirement done by a later sweep")
    # A Redx Redis that comes back from a restart with its old data (persisted) while
    # the retirement waits gets it too.
    w.write_services("api.json", [service("api")])
    eventually(lambda: servers(redx, "api") == {address: "0"}, 5, what="api routed again")
    redx.save()
    redx_server.stop()
    try:
        w.write_services("api.json", [])
        eventually(lambda: w.log().count("did not take a retirement") >= 2, 10, what="refused again")
        redx_server.start()
        restored = redx_server.client()
        eventually(lambda: restored.get("frontend:api.example.com") is None
                   and restored.hgetall("backend:api") == {}, 10, what="retired after the restart")
        # Removed from the data the restart brought back, not found gone already.
        assert w.log().count("- frontend:api.example.com api") == 2
    finally:
        os.remove(os.path.join(redx_server.dir, "dump.rdb"))
    assert "+ frontend:api.example.com" not in w.log().rsplit("services reloaded: web", 1)[-1]


# -- Redx fallback: a frontend only while its backend has a server ----------------------


def test_a_frontend_exists_only_while_its_backend_has_a_server(redx, containers, warden):
    """Redx answers 500 for a frontend over an empty backend and falls back only when the
    key is missing: no container, no frontend; the first server is written before the
    frontend; the last one leaving takes the frontend with it."""
    w = warden([service("web")])
    assert sorted(w.command("sweep", "--dry-run", check=True).stdout.splitlines()) == []
    w.start()
    assert redx.get("frontend:web.example.com") is None
    status = json.loads(w.command("status", "--json", check=True).stdout)
    assert status["services"][0]["routes"] == [] and status["services"][0]["fallback"] is True
    assert "no servers (fallback)" in w.command("status", check=True).stdout
    redx.config_set("notify-keyspace-events", "KA")
    watch = redx.pubsub()
    watch.psubscribe("__keyspace@0__:*end:web*")
    c = containers.run("web")
    address = f"{ip_of(c)}:8080"
    eventually(lambda: redx.get("frontend:web.example.com") == "web", 5, what="the frontend")
    assert servers(redx, "web") == {address: "0"}
    seen: list = []
    deadline = time.monotonic() + 3
    while len(seen) < 2 and time.monotonic() < deadline:
        message = watch.get_message(timeout=0.2)
        if message and message["type"] == "pmessage":
            seen.append((message["channel"].split(":", 1)[1], message["data"]))
    assert seen[:2] == [("backend:web", "hset"), ("frontend:web.example.com", "set")], seen
    assert f"+ frontend:web.example.com web (service web, container {c.short_id})" in w.log()
    c.remove(force=True)
    eventually(lambda: redx.get("frontend:web.example.com") is None, 5, what="the frontend gone")
    assert servers(redx, "web") == {}
    assert "- frontend:web.example.com web" in w.log()
    watch.close()
    redx.config_set("notify-keyspace-events", "")


def test_a_static_server_keeps_its_frontend_and_another_backends_frontend_stays(redx, containers, warden):
    redx.hset("backend:web", mapping={"_sticky": "1", "10.200.0.5:80": "0"})
    redx.set("frontend:api.example.com", "someone-else")
    w = warden([service("web"), service("api")]).start()
    assert redx.get("frontend:web.example.com") == "web", "a static server counts"
    assert redx.get("frontend:api.example.com") == "someone-else"
    c = containers.run("web")
    address = f"{ip_of(c)}:8080"
    eventually(lambda: address in servers(redx, "web"), 5, what="routed")
    c.remove(force=True)
    eventually(lambda: address not in servers(redx, "web"), 5, what="unrouted")
    assert redx.get("frontend:web.example.com") == "web"
    assert servers(redx, "web") == {"_sticky": "1", "10.200.0.5:80": "0"}
    # A person removes the static server: the next sweep takes the frontend away.
    redx.hdel("backend:web", "10.200.0.5:80")
    assert w.command("sweep", "--dry-run", check=True).stdout.splitlines() == [
        "- frontend:web.example.com web"]
    w.command("sweep", check=True)
    assert redx.get("frontend:web.example.com") is None
    assert redx.get("frontend:api.example.com") == "someone-else"


def test_a_broken_service_file_is_loaded_and_counted_once_per_change(redx, warden):
    """The service watcher loads the files; the Registrar used to load them again on
    its reload, so each broken change was counted (and logged) twice."""
    from conftest import free_port
    from test_readiness import metric

    port = free_port()
    w = warden([service("web")], metricsAddress=f"127.0.0.1:{port}").start()
    assert metric(port, "warden_service_file_errors_total") == 0
    w.write_services("broken.json", "{not json")
    eventually(lambda: "broken.json: -: invalid JSON" in w.log(), 5, what="the problem logged")
    eventually(lambda: "sweep (services changed)" in w.log(), 5, what="the reload's sweep")
    assert metric(port, "warden_service_file_errors_total") == 1
    assert w.log().count("broken.json: -: invalid JSON") == 1


def test_a_service_removed_while_warden_was_down_is_retired_at_the_first_sweep(redx, containers, warden):
    """Retirements lived in memory: a service removed while Warden was down kept its
    Redx keys for ever, as sweeps looked only at services in force. Warden's record in
    the Redx Redis says what it wrote; foreign entries stay."""
    api = {"name": "api", "containerName": f"wt-{RUN}-api", "port": 8080, "loadBalancerUrl": "api.example.com"}
    web = {"name": "web", "containerName": f"wt-{RUN}-web", "port": 8080, "loadBalancerUrl": "web.example.com"}
    w = warden([web, api]).start()
    one, two = containers.run("web"), containers.run("api")
    eventually(lambda: redx.hgetall("backend:api") == {f"{ip_of(two)}:8080": "0"}, 5, what="api routed")
    redx.hset("backend:api", "10.99.0.1:80", "0")  # a static server an operator added
    redx.set("frontend:static.example.com", "api")  # and a frontend of theirs
    w.stop()
    w.write_services("services.json", [web])
    w.start()
    assert redx.hgetall("backend:api") == {"10.99.0.1:80": "0"}, "Warden's address of a retired service stayed"
    assert redx.get("frontend:api.example.com") is None
    assert redx.get("frontend:static.example.com") == "api", "a key Warden did not write went"
    assert redx.hgetall("backend:web") == {f"{ip_of(one)}:8080": "0"}
    assert "- backend:api " in w.log() and "- frontend:api.example.com api" in w.log()
