"""The haproxy handler through a real HAProxy (Debian's 2.6): servers added and
enabled through the runtime API when a container is ready, held in ``maint`` at its
kill and deleted after it died, frontends as entries of Warden's map only while their
backend has a server, foreign servers and entries left alone, and everything put back
after HAProxy restarts from its file config."""

from __future__ import annotations

import json
import time

from conftest import RUN, eventually, ip_of

MAINT = 0x01


def web(**fields) -> dict:
    return {"name": "web", "containerName": f"wt-{RUN}-web", "port": 8080, "loadBalancerUrl": "web.example.com",
            **fields}


def start(warden, haproxy, services, **config):
    return warden(services, handlers=["haproxy"], haproxy=haproxy.settings, **config).start()


def test_a_ready_container_is_served_through_haproxy_held_at_its_kill_and_deleted_after_it_died(
        haproxy, redx, containers, warden):
    w = start(warden, haproxy, [web()])
    assert haproxy.get("web.example.com") == (503, "fallback"), "no server: the fallback answers"
    one = containers.run("web")
    address = f"{ip_of(one)}:8080"
    eventually(lambda: haproxy.get("web.example.com")[0] == 200, 10, what="served through HAProxy")
    assert haproxy.entries() == {"web.example.com/": "web"}
    assert haproxy.servers("web") == {address: 0}
    assert f"+ haproxy:web {address}" in w.log() and "+ haproxy-map:web.example.com/ web" in w.log()
    [service] = json.loads(w.command("status", "--json", check=True).stdout)["services"]
    assert service["routes"] == [address], "warden status reads the routes from HAProxy"

    one.stop(timeout=3)  # SIGTERM first: the test image's PID 1 ignores it until the kill
    eventually(lambda: haproxy.servers("web").get(address, MAINT) & MAINT, 5, what="maint at the stop")
    assert haproxy.entries() == {}, "the entry goes with the last server taking requests"
    assert haproxy.get("web.example.com") == (503, "fallback")
    eventually(lambda: address not in haproxy.servers("web"), 10, what="deleted after it died")


def test_the_sweep_leaves_foreign_servers_and_entries_alone_and_restores_after_a_restart(
        haproxy, redx, containers, warden):
    haproxy.command("add server web/static 127.0.0.1:1")
    haproxy.command(f"add map {haproxy.map} other.example.com/ api")
    w = start(warden, haproxy, [web(), web(name="api", containerName=f"wt-{RUN}-api",
                                           loadBalancerUrl="api.example.com")], registrarSleepTimeSeconds=1)
    one = containers.run("web")
    address = f"{ip_of(one)}:8080"
    eventually(lambda: haproxy.get("web.example.com")[0] == 200, 10, what="served")
    time.sleep(2.5)  # sweeps
    assert "127.0.0.1:1" in haproxy.servers("web"), "a server Warden did not add was removed"
    assert haproxy.entries().get("other.example.com/") == "api", "an entry Warden did not write was removed"
    assert "api.example.com/" not in haproxy.entries(), "an entry over a backend with no server of Warden's"

    haproxy.restart()  # from its file config: none of Warden's servers, an empty map
    eventually(lambda: haproxy.servers("web").get(address) == 0, 10, what="the server put back")
    eventually(lambda: haproxy.get("web.example.com")[0] == 200, 10, what="served again")
    assert "HAProxy restarted" in w.log()


def test_a_backend_haproxy_lacks_is_said_once_and_the_other_services_go_on(haproxy, redx, containers, warden):
    w = start(warden, haproxy, [web(), web(name="blog", containerName=f"wt-{RUN}-blog", backendName="blog",
                                            loadBalancerUrl="blog.example.com")], registrarSleepTimeSeconds=1)
    containers.run("blog")
    containers.run("web")
    eventually(lambda: haproxy.get("web.example.com")[0] == 200, 10, what="web served")
    eventually(lambda: "HAProxy has no backend 'blog'" in w.log(), 10, what="the missing backend named")
    time.sleep(2.5)
    assert w.log().count("HAProxy has no backend 'blog'") == 1, "said at every sweep"


def test_a_runtime_api_that_does_not_answer_makes_warden_unready_and_it_catches_up(
        haproxy, redx, containers, warden):
    from conftest import free_port, http_get

    metrics = free_port()
    w = start(warden, haproxy, [web()], metricsAddress=f"127.0.0.1:{metrics}", registrarSleepTimeSeconds=1)
    eventually(lambda: http_get(f"http://127.0.0.1:{metrics}/readyz")[0] == 200, 10, what="ready")
    haproxy.stop()
    one = containers.run("web")
    eventually(lambda: http_get(f"http://127.0.0.1:{metrics}/readyz")[0] == 503, 10, what="unready")
    assert json.loads(http_get(f"http://127.0.0.1:{metrics}/readyz")[1])["dependencies"]["haproxy"] is False
    report = json.loads(w.command("status", "--json").stdout)
    assert any(f"HAProxy runtime API {haproxy.socket} does not answer" in e for e in report["errors"]), report
    haproxy.start()
    eventually(lambda: haproxy.servers("web").get(f"{ip_of(one)}:8080") == 0, 15, what="caught up")
    eventually(lambda: http_get(f"http://127.0.0.1:{metrics}/readyz")[0] == 200, 10, what="ready again")
    assert w.log().count("does not answer") == 1, "said once"


def test_a_service_names_its_haproxy_backend(haproxy, redx, containers, warden):
    """``haproxyBackend``: the servers go to that backend of haproxy.cfg, whatever the
    service's backendName (here one haproxy.cfg does not declare)."""
    w = start(warden, haproxy, [web(backendName="web-v2", haproxyBackend="shop")])
    one = containers.run("web")
    eventually(lambda: haproxy.get("web.example.com")[0] == 200, 10, what="served through backend shop")
    assert haproxy.servers("shop") == {f"{ip_of(one)}:8080": 0}
    assert haproxy.entries() == {"web.example.com/": "shop"}
    [service] = json.loads(w.command("status", "--json", check=True).stdout)["services"]
    assert service["routes"] == [f"{ip_of(one)}:8080"], "warden status reads them from the backend it names"


def test_a_map_haproxy_did_not_load_is_named_and_the_servers_go_on(haproxy, redx, containers, warden):
    """Warden pointed at a map file haproxy.cfg does not use: the servers are still
    added, also by a sweep (whose ``show map`` error used to end it before the servers),
    and the map is named once as one HAProxy has not loaded."""
    settings = dict(haproxy.settings, map=str(haproxy.folder / "other.map"))
    w = warden([web()], handlers=["haproxy"], haproxy=settings, registrarSleepTimeSeconds=1).start()
    one = containers.run("web")
    eventually(lambda: haproxy.servers("web").get(f"{ip_of(one)}:8080") == 0, 10, what="the server added")
    eventually(lambda: f"HAProxy has not loaded the map {settings['map']}" in w.log(), 10, what="the map named")
    time.sleep(2.5)  # sweeps
    assert w.log().count("HAProxy has not loaded the map") == 1, "said at every sweep"
    haproxy.restart()  # its servers gone: only a sweep puts them back
    eventually(lambda: haproxy.servers("web").get(f"{ip_of(one)}:8080") == 0, 10,
               what="the server put back by a sweep, the map notwithstanding")


def test_a_label_path_cannot_become_a_runtime_api_command(haproxy, redx, containers, warden):
    """``;`` separates runtime-API commands: a label path ``.../x;show`` with backend
    ``shop`` sent ``add map ... shop.example.com/api/x`` and then ``show shop``."""
    w = start(warden, haproxy, [web()], registrarSleepTimeSeconds=0.5, labelFrontends=["shop.example.com/api/*"])
    mine = containers.run("web")
    thief = containers.run("thief", labels={"warden.service": f"thief-{RUN}", "warden.port": "8080",
                                            "warden.backend": "shop", "warden.frontend": "shop.example.com/api/x;show"})
    eventually(lambda: haproxy.get("web.example.com")[0] == 200, 10, what="the file's service served")
    eventually(lambda: w.log().count("sweep (periodic)") >= 2, 5, what="sweeps")
    assert haproxy.servers("shop") == {}, "the thief's container became a server"
    assert haproxy.entries() == {"web.example.com/": "web"}
    status = w.command("status", check=True).stdout
    assert f"not routed: container {thief.name}" in status
    assert f"container {thief.name} ({thief.short_id}): label warden.frontend: 'shop.example.com/api/x" in w.log()
    assert ip_of(mine)


def test_a_removed_service_is_retired_and_its_host_falls_back(haproxy, redx, containers, warden):
    """The retired service's map entry stayed and named a backend with no server: 503
    from that backend, never the ``default_backend``."""
    api = web(name="api", containerName=f"wt-{RUN}-api", loadBalancerUrl="api.example.com")
    shop = web(name="shop", containerName=f"wt-{RUN}-shop", loadBalancerUrl="shop.example.com")
    w = start(warden, haproxy, [web(), api, shop])
    one, two, three = containers.run("web"), containers.run("api"), containers.run("shop")
    for host in ("web", "api", "shop"):
        eventually(lambda: haproxy.get(f"{host}.example.com")[0] == 200, 10, what=f"{host} served")
    w.write_services("services.json", [web(), shop])
    eventually(lambda: haproxy.get("api.example.com") == (503, "fallback"), 10, what="api falls back")
    assert "api.example.com/" not in haproxy.entries() and haproxy.servers("api") == {}
    w.stop()
    w.write_services("services.json", [web()])
    w.start()
    eventually(lambda: haproxy.get("shop.example.com") == (503, "fallback"), 10, what="shop retired at start")
    assert haproxy.entries() == {"web.example.com/": "web"}
    assert haproxy.get("web.example.com")[0] == 200
    assert ip_of(one) and ip_of(two) and ip_of(three)
