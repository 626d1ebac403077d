"""The traefik handler through a real Traefik (its Redis provider): a ready container
is served, a router exists only while its backend has a server, a stop takes it out
while it still runs, other servers in the list stay, and a Redis without keyspace
notifications is named."""

from __future__ import annotations

import json

from conftest import RUN, eventually, ip_of


def web(**fields) -> dict:
    return {"name": "web", "containerName": f"wt-{RUN}-web", "port": 8080, "loadBalancerUrl": "web.example.com",
            **fields}


def test_a_ready_container_is_served_through_traefik_and_leaves_at_its_stop(traefik, redx, containers, warden):
    w = warden([web()], handlers=["traefik"], traefik=traefik.settings).start()
    assert traefik.get("web.example.com")[0] == 404, "no router: Traefik's own 404"
    one = containers.run("web")
    address = f"{ip_of(one)}:8080"
    eventually(lambda: traefik.get("web.example.com")[0] == 200, 10, what="served through Traefik")
    store = traefik.redis_server.client()
    assert store.get("traefik/http/services/web/loadBalancer/servers/0/url") == f"http://{address}"
    assert store.get("traefik/http/routers/warden-web-example-com/rule") == "Host(`web.example.com`)"
    assert f"+ traefik:web {address}" in w.log()
    [service] = json.loads(w.command("status", "--json", check=True).stdout)["services"]
    assert service["routes"] == [address], "warden status reads the routes from Traefik's Redis"
    one.kill(signal="SIGTERM")  # as `docker stop` begins; its PID 1 runs on
    eventually(lambda: traefik.get("web.example.com")[0] == 404, 5, what="out at the SIGTERM")
    assert store.keys("traefik/http/routers/*") == [], "a router over an empty service"


def test_other_servers_in_the_list_stay(traefik, redx, containers, warden):
    store = traefik.redis_server.client()
    store.set("traefik/http/services/web/loadBalancer/servers/0/url", "http://10.99.0.1:80")
    warden([web()], handlers=["traefik"], traefik=traefik.settings, registrarSleepTimeSeconds=1).start()
    one = containers.run("web")
    eventually(lambda: f"http://{ip_of(one)}:8080" in store.mget(store.keys("traefik/http/services/web/*")), 10,
               what="written")
    import time

    time.sleep(2.5)
    assert "http://10.99.0.1:80" in store.mget(store.keys("traefik/http/services/web/*")), "a foreign server went"


def test_a_redis_without_keyspace_notifications_is_named(traefik, redx, warden):
    traefik.redis_server.client().config_set("notify-keyspace-events", "")
    w = warden([web()], handlers=["traefik"], traefik=traefik.settings).start()
    assert "has notify-keyspace-events '': Traefik's Redis provider sees changes only through keyspace " \
           "notifications; set it to KEA" in w.log()


def test_the_last_router_removed_takes_effect(traefik, redx, containers, warden):
    """Traefik skips a provider's empty configuration and keeps serving the one before:
    with nothing of Warden's left in its Redis, the last router stayed for ever. A
    key of Warden's (its retry middleware) keeps the tree from being empty."""
    warden([web()], handlers=["traefik"], traefik=traefik.settings).start()
    for _ in range(2):
        one = containers.run("web")
        eventually(lambda: traefik.get("web.example.com")[0] == 200, 10, what="served")
        one.kill()
        eventually(lambda: traefik.get("web.example.com")[0] == 404, 5, what="gone with the last server")
    store = traefik.redis_server.client()
    assert sorted(store.keys("traefik/*")) == [
        "traefik/http/middlewares/warden-retry/retry/attempts",
        "traefik/http/serversTransports/warden/forwardingTimeouts/dialTimeout"], "only Warden's shared keys left"


def test_a_traefik_redis_that_does_not_answer_makes_warden_unready_and_is_caught_up(traefik, redx, containers,
                                                                                   warden):
    from conftest import free_port, http_get

    metrics = free_port()
    w = warden([web()], handlers=["traefik"], traefik=traefik.settings, metricsAddress=f"127.0.0.1:{metrics}")
    w.start()
    one = containers.run("web")
    eventually(lambda: traefik.get("web.example.com")[0] == 200, 10, what="served")
    traefik.redis_server.stop()
    eventually(lambda: http_get(f"http://127.0.0.1:{metrics}/readyz")[0] == 503, 10, what="unready")
    assert json.loads(http_get(f"http://127.0.0.1:{metrics}/readyz")[1])["dependencies"]["traefik-redis"] is False
    report = json.loads(w.command("status", "--json").stdout)
    assert any("Traefik's Redis 127.0.0.1:" in e for e in report["errors"]), report["errors"]
    traefik.redis_server.start()  # empty: nothing is persisted (Traefik serves its last configuration)
    store = traefik.redis_server.client()
    eventually(lambda: store.get("traefik/http/services/web/loadBalancer/servers/0/url") == f"http://{ip_of(one)}:8080",
               15, what="written again")
    eventually(lambda: http_get(f"http://127.0.0.1:{metrics}/readyz")[0] == 200, 10, what="ready again")
    assert f"{ip_of(one)}:8080" in json.loads(w.command("status", "--json").stdout)["services"][0]["routes"]


def test_a_label_path_cannot_become_rule_syntax_and_take_another_host(traefik, redx, containers, warden):
    """A path with a backtick, parentheses and ``||`` that a ``labelFrontends`` pattern
    matches by its ``*``: pasted into ``PathPrefix(...)`` it made a longer, higher
    priority rule that took all of a file-defined service's host."""
    pay = web(name="pay", containerName=f"wt-{RUN}-pay", loadBalancerUrl="pay.example.com")
    w = warden([pay], handlers=["traefik"], traefik=traefik.settings, registrarSleepTimeSeconds=0.5,
               labelFrontends=["shop.example.com/api/*"]).start()
    shop = {"warden.service": f"shop-{RUN}", "warden.port": "8080"}
    good = containers.run("shop", labels={**shop, "warden.frontend": "shop.example.com/api/ok"})
    thief = containers.run("thief", labels={"warden.service": f"thief-{RUN}", "warden.port": "8080",
                                            "warden.frontend": "shop.example.com/api/x`)||Host(`pay.example.com"})
    # The container's own server answers 404 for /api/ok, with a body other than Traefik's.
    eventually(lambda: traefik.get("shop.example.com", "/api/ok")[1] not in ("404 page not found\n", ""), 10,
               what="the legitimate one served")
    eventually(lambda: w.log().count("sweep (periodic)") >= 2, 5, what="sweeps")
    assert traefik.get("pay.example.com")[0] == 404, "pay has no container: the thief's rule took its host"
    store = traefik.redis_server.client()
    rules = [store.get(k) for k in store.keys("traefik/http/routers/*/rule")]
    assert rules == ["Host(`shop.example.com`) && PathPrefix(`/api/ok`)"]
    status = w.command("status", check=True).stdout
    assert f"not routed: container {thief.name}" in status
    assert f"container {thief.name} ({thief.short_id}): label warden.frontend: 'shop.example.com/api/x" in w.log()
    assert ip_of(good)


def test_a_removed_service_is_retired_while_warden_runs_and_after_a_restart(traefik, redx, containers, warden):
    """Removing a service from the files left its router and servers in Traefik's Redis,
    routing to addresses that may be reused; one removed while Warden was down too."""
    api = web(name="api", containerName=f"wt-{RUN}-api", loadBalancerUrl="api.example.com")
    shop = web(name="shop", containerName=f"wt-{RUN}-shop", loadBalancerUrl="shop.example.com")
    w = warden([web(), api, shop], handlers=["traefik"], traefik=traefik.settings).start()
    one, two, three = containers.run("web"), containers.run("api"), containers.run("shop")
    for host in ("web", "api", "shop"):
        eventually(lambda: traefik.get(f"{host}.example.com")[0] == 200, 10, what=f"{host} served")
    store = traefik.redis_server.client()
    w.write_services("services.json", [web(), shop])
    eventually(lambda: traefik.get("api.example.com")[0] == 404, 10, what="api retired while Warden runs")
    assert store.keys("traefik/http/services/api/*") == [], "the retired service's servers stayed"
    w.stop()
    w.write_services("services.json", [web()])
    w.start()
    eventually(lambda: traefik.get("shop.example.com")[0] == 404, 10, what="shop retired at the first sweep")
    assert store.keys("traefik/http/services/shop/*") == []
    assert sorted(store.keys("traefik/http/routers/*/rule")) == ["traefik/http/routers/warden-web-example-com/rule"]
    assert traefik.get("web.example.com")[0] == 200, "the service in force is still served"
    assert ip_of(one) and ip_of(two) and ip_of(three)
