"""Services declared by the containers themselves, through labels: real Docker, a real
Redx Redis, ELB enrolment through the moto server."""

from __future__ import annotations

import json

from conftest import RUN, eventually, ip_of


#: the frontends the tests' containers may define by labels (none without a pattern)
ALLOWED = {"labelFrontends": ["*.example.com", "*.example.com/*"]}


def labels(service: str, frontend: str, port: str = "8080", **more: str) -> dict:
    found = {"warden.service": service, "warden.frontend": frontend, "warden.port": port}
    found.update({f"warden.{k.replace('_', '-')}": v for k, v in more.items()})
    return found


def test_a_labelled_container_defines_its_route_and_enrolment(redx, containers, warden, cloud):
    w = warden([], instanceId=cloud.instance_id, labelLoadBalancers=[cloud.elb_name], **ALLOWED).start()
    c = containers.run("shop", labels=labels(f"shop-{RUN}", "shop.example.com/api/",
                                              load_balancer=cloud.elb_name))
    address = f"{ip_of(c)}:8080"
    backend = f"backend:shop-{RUN}"
    eventually(lambda: address in redx.hgetall(backend), 5, what="routed")
    assert redx.get("frontend:shop.example.com/api/") == f"shop-{RUN}"
    eventually(cloud.in_elb, 10, what="enrolled")
    report = json.loads(w.command("status", "--json", check=True).stdout)
    [entry] = [s for s in report["services"] if s["name"] == f"shop-{RUN}"]
    assert entry["source"].startswith("labels of container ") and c.name in entry["source"]
    assert entry["routes"] == [address]
    c.kill()
    eventually(lambda: redx.hgetall(backend) == {}, 5, what="unrouted")
    assert redx.get("frontend:shop.example.com/api/") is None
    eventually(lambda: not cloud.in_elb(), 10, what="deregistered")


def test_files_win_and_labels_cannot_take_a_files_frontend(redx, containers, warden):
    web = {"name": "web", "containerName": f"wt-{RUN}-web", "port": 8080,
           "loadBalancerUrl": "web.example.com"}
    w = warden([web], registrarSleepTimeSeconds=0.5, **ALLOWED).start()
    # A container of the file's service: its labels only assign it.
    mine = containers.run("web", labels=labels("web", "evil.example.com", "9000"))
    # Another service's container trying to take the file's frontend.
    thief = containers.run("thief", labels=labels(f"thief-{RUN}", "web.example.com"))
    eventually(lambda: f"{ip_of(mine)}:8080" in redx.hgetall("backend:web"), 5, what="routed as the file says")
    eventually(lambda: "frontend 'web.example.com' belongs to service 'web'" in w.log(), 5,
               what="the refusal logged")
    eventually(lambda: w.log().count("sweep (periodic)") >= 2, 5, what="sweeps")
    assert redx.hgetall("backend:web") == {f"{ip_of(mine)}:8080": "0"}
    assert redx.get("frontend:web.example.com") == "web"
    assert redx.get("frontend:evil.example.com") is None
    assert redx.hgetall(f"backend:thief-{RUN}") == {}
    assert w.log().count("label warden.frontend: frontend 'web.example.com' belongs") == 1, "logged once"
    status = w.command("status", check=True).stdout
    assert f"not routed: container {thief.name}" in status
    validate = w.command("validate").stdout
    assert f"container {thief.name} ({thief.short_id}): label warden.frontend: frontend " \
           f"'web.example.com' belongs to service 'web' (warning)" in validate
    assert w.command("sweep", "--dry-run", check=True).stdout == ""


def test_the_first_label_definition_stands(redx, containers, warden):
    warden([], **ALLOWED).start()
    first = containers.run("a", labels=labels(f"a-{RUN}", "x.example.com"))
    eventually(lambda: redx.hgetall(f"backend:a-{RUN}"), 5, what="the first routed")
    other = containers.run("b", labels=labels(f"b-{RUN}", "x.example.com"))
    differs = containers.run("a", labels=labels(f"a-{RUN}", "x.example.com", "9000"))
    same = containers.run("a", labels=labels(f"a-{RUN}", "x.example.com"))
    eventually(lambda: f"{ip_of(same)}:8080" in redx.hgetall(f"backend:a-{RUN}"), 5, what="a second container")
    assert set(redx.hgetall(f"backend:a-{RUN}")) == {f"{ip_of(first)}:8080", f"{ip_of(same)}:8080"}
    assert redx.hgetall(f"backend:b-{RUN}") == {}
    assert redx.get("frontend:x.example.com") == f"a-{RUN}"
    assert ip_of(differs) and ip_of(other)


def test_bad_label_values_leave_only_that_container_unrouted(redx, containers, warden):
    w = warden([], **ALLOWED).start()
    bad = {
        "port": containers.run("p", labels=labels(f"p-{RUN}", "p.example.com", "eighty")),
        "frontend": containers.run("f", labels=labels(f"f-{RUN}", "http://f.example.com")),
        "readiness": containers.run("r", labels=labels(f"r-{RUN}", "r.example.com", readiness="maybe")),
        # Text from labels reaches alerts: a chat format would read this as a mention.
        "service": containers.run("s", labels=labels("<!channel>", "s.example.com")),
        "backend": containers.run("b", labels=labels(f"b-{RUN}", "b.example.com", backend="[x](https://evil)")),
    }
    good = containers.run("g", labels=labels(f"g-{RUN}", "g.example.com", readiness="http:/"))
    eventually(lambda: f"{ip_of(good)}:8080" in redx.hgetall(f"backend:g-{RUN}"), 5, what="the good one")
    for label, container in bad.items():
        eventually(lambda: f"container {container.name} ({container.short_id}): label warden.{label}:"
                   in w.log(), 5, what=f"the {label} problem logged")
    for name in ("p", "f", "r", "b"):
        assert redx.hgetall(f"backend:{name}-{RUN}") == {}
    assert redx.keys("*channel*") == [] and redx.keys("*evil*") == []
    assert "'<!channel>' must be a name of 1 to 128 letters, digits, '.', '_', ':' or '-'" in w.log()
    assert "'eighty' is not a port number" in w.log()
    assert "must be host or host/path/ (no scheme)" in w.log()


def test_container_labels_off_routes_nothing_by_labels(redx, containers, warden):
    w = warden([], containerLabels="off", **ALLOWED).start()
    c = containers.run("off", labels=labels(f"off-{RUN}", "off.example.com"))
    later = containers.run("later")  # events are handled in order
    eventually(lambda: f"docker event container start {later.id[:12]}" in w.log(), 5, what="events seen")
    assert redx.hgetall(f"backend:off-{RUN}") == {} and ip_of(c)
    assert w.command("validate", check=True).stdout == ""


def test_a_restarted_warden_routes_labelled_containers_from_its_first_listing(redx, containers, warden):
    c = containers.run("early", labels=labels(f"early-{RUN}", "early.example.com"))
    w = warden([], **ALLOWED).start()
    assert redx.hgetall(f"backend:early-{RUN}") == {f"{ip_of(c)}:8080": "0"}
    assert redx.get("frontend:early.example.com") == f"early-{RUN}"
    assert w.command("sweep", "--dry-run", check=True).stdout == ""


def test_a_containers_creation_time_reads_the_same_from_a_listing_and_an_inspect(containers, docker_client):
    """The first-created label definition stands. The listing gives whole seconds and
    inspect nanoseconds: the same two containers compared in a sweep and after an event
    could rank differently, and the standing definition flipped between them, with
    frontend and port churn each time. Both paths read one precision, inspect's (a
    container first seen in a listing is inspected once); ties go by id."""
    from warden.subscribers.docker import DockerSource

    source = DockerSource(docker_client)
    made = [containers.run("created") for _ in range(3)]
    listed = {c.id: c.created for c in source.running() if c.id in {m.id for m in made}}
    inspected = {m.id: source.inspect(m.id).created for m in made}
    assert listed == inspected
    assert all(value > 0 for value in listed.values())
    # Two containers started within one second still rank in the order they were made.
    assert sorted(made, key=lambda m: listed[m.id]) == made


def test_a_label_definition_that_changes_hands_routes_every_container_of_it_at_once(redx, containers, warden):
    """A rolling deploy changing ``warden.port``: B is refused while A's definition
    stands; A dies and B's definition stands, so B must be routed at once, not at the
    next periodic sweep. The same for a container that only carries
    ``warden.service=Y``, running before Y's defining container starts."""
    w = warden([], registrarSleepTimeSeconds=600, **ALLOWED).start()
    old = containers.run("roll", labels=labels(f"roll-{RUN}", "roll.example.com"))
    eventually(lambda: redx.hgetall(f"backend:roll-{RUN}") == {f"{ip_of(old)}:8080": "0"}, 5, what="A routed")
    new = containers.run("roll", labels=labels(f"roll-{RUN}", "roll.example.com", "9000"))
    eventually(lambda: "defines service" in w.log(), 5, what="B refused while A stands")
    old.kill()
    eventually(lambda: redx.hgetall(f"backend:roll-{RUN}") == {f"{ip_of(new)}:9000": "0"}, 5,
               what="B routed once its definition stands")
    assert redx.get("frontend:roll.example.com") == f"roll-{RUN}"

    # A container carrying only warden.service=Y does not join Y (issue 35, defect 3).
    member = containers.run("member", labels={"warden.service": f"late-{RUN}"})
    definer = containers.run("definer", labels=labels(f"late-{RUN}", "late.example.com"))
    eventually(lambda: set(redx.hgetall(f"backend:late-{RUN}")) == {f"{ip_of(definer)}:8080"}, 5,
               what="the definer routed at once")
    assert w.log().count("sweep (periodic)") == 0 and ip_of(member)


def test_a_label_alone_never_joins_a_file_defined_service(redx, containers, warden):
    """``warden.service=payments`` on a container of another image and name was routed
    as a payments server (and would enrol the host in payments' load balancer), with
    ``containerLabels`` on or off. The label narrows among the services whose
    ``containerName`` a container matches; it never widens. A service that opts in with
    ``labelMembers: "any"`` takes labelled containers whatever they run."""
    payments = {"name": "payments", "containerName": f"wt-{RUN}-pay", "port": 8080,
                "loadBalancerUrl": "pay.example.com"}
    shop = {"name": "shop", "containerName": f"wt-{RUN}-shopfront", "port": 8080,
            "loadBalancerUrl": "shop.example.com", "labelMembers": "any"}
    for setting in ("on", "off"):
        w = warden([payments, shop], containerLabels=setting, registrarSleepTimeSeconds=0.5).start()
        evil = containers.run("evil", labels={"warden.service": "payments"})
        real = containers.run("pay", labels={"warden.service": "payments"})
        joined = containers.run("helper", labels={"warden.service": "shop"})
        eventually(lambda: redx.hgetall("backend:payments") == {f"{ip_of(real)}:8080": "0"}, 5,
                   what="the real payments container routed")
        eventually(lambda: redx.hgetall("backend:shop") == {f"{ip_of(joined)}:8080": "0"}, 5,
                   what="a labelled container joins the service that opted in")
        eventually(lambda: w.log().count("sweep (periodic)") >= 2, 5, what="sweeps")
        assert redx.hgetall("backend:payments") == {f"{ip_of(real)}:8080": "0"}, \
            f"a labelled container of another image joined payments (containerLabels {setting})"
        assert w.stop() == 0
        for c in (evil, real, joined):
            c.remove(force=True)
        redx.flushall()


def test_without_label_frontends_no_container_defines_a_service(redx, containers, warden):
    """Label-defined services were on by default and bounded only by exact keys: any
    container on the host could publish any frontend. With no ``labelFrontends``
    pattern, a container that defines a service is refused, with a line naming the key."""
    w = warden([], registrarSleepTimeSeconds=0.5).start()
    c = containers.run("shop", labels=labels(f"shop-{RUN}", "shop.example.com"))
    eventually(lambda: f"container {c.name} ({c.short_id}): label warden.frontend: frontend "
                       "'shop.example.com' refused: labelFrontends allows no frontend" in w.log(), 5,
               what="the refusal logged")
    eventually(lambda: w.log().count("sweep (periodic)") >= 2, 5, what="sweeps")
    assert redx.get("frontend:shop.example.com") is None and redx.hgetall(f"backend:shop-{RUN}") == {}
    assert f"not routed: container {c.name}" in w.command("status", check=True).stdout
    assert "labelFrontends allows no frontend" in w.command("validate").stdout


def test_a_label_frontend_is_a_name_the_operators_patterns_allow(redx, containers, warden):
    """``*`` and ``localhost/..`` were accepted as frontends. A frontend is a host name
    and a path without wildcards or dot segments, and it must match a pattern."""
    w = warden([], registrarSleepTimeSeconds=0.5, labelFrontends=["*.apps.example.com", "shop.example.com/api/*"]).start()
    refused = {
        "*": "'*' must be a host name",
        "localhost/..": "'localhost/..' must be a host name",
        "a.apps.example.com/x/../y": "'a.apps.example.com/x/../y' must be a host name",
        "shop.example.com/admin/": "frontend 'shop.example.com/admin/' matches no labelFrontends pattern "
                                   "(*.apps.example.com, shop.example.com/api/*)",
        "evil.example.com": "frontend 'evil.example.com' matches no labelFrontends pattern",
    }
    made = {frontend: containers.run("bad", labels=labels(f"bad{n}-{RUN}", frontend))
            for n, frontend in enumerate(refused)}
    good = containers.run("good", labels=labels(f"good-{RUN}", "shop.example.com/api/v2/"))
    other = containers.run("apps", labels=labels(f"apps-{RUN}", "a.apps.example.com"))
    eventually(lambda: redx.hgetall(f"backend:good-{RUN}") == {f"{ip_of(good)}:8080": "0"}, 5, what="allowed")
    eventually(lambda: redx.hgetall(f"backend:apps-{RUN}") == {f"{ip_of(other)}:8080": "0"}, 5, what="allowed")
    for frontend, why in refused.items():
        c = made[frontend]
        eventually(lambda: f"container {c.name} ({c.short_id}): label warden.frontend: {why}" in w.log(), 5,
                   what=f"{frontend} refused")
    eventually(lambda: w.log().count("sweep (periodic)") >= 2, 5, what="sweeps")
    assert sorted(redx.keys("frontend:*")) == ["frontend:a.apps.example.com", "frontend:shop.example.com/api/v2/"]
    assert all(redx.hgetall(f"backend:bad{n}-{RUN}") == {} for n in range(len(refused)))


def test_a_label_takes_no_path_on_the_host_of_a_file_service(redx, containers, warden):
    """``pay.example.com/admin/`` beside a file service on ``pay.example.com`` was
    accepted, and Redx matches the longest path first: the container took the payments
    site's /admin/. A host of a file-defined frontend needs a pattern that names it."""
    pay = {"name": "payments", "containerName": f"wt-{RUN}-pay", "port": 8080, "loadBalancerUrl": "pay.example.com"}
    shop = {"name": "shop", "containerName": f"wt-{RUN}-shopfront", "port": 8080,
            "loadBalancerUrl": "shop.example.com"}
    w = warden([pay, shop], registrarSleepTimeSeconds=0.5,
               labelFrontends=["*.example.com/*", "shop.example.com/api/*"]).start()
    real = containers.run("pay")
    thief = containers.run("thief", labels=labels(f"admin-{RUN}", "pay.example.com/admin/"))
    api = containers.run("api", labels=labels(f"api-{RUN}", "shop.example.com/api/"))
    eventually(lambda: redx.hgetall(f"backend:api-{RUN}") == {f"{ip_of(api)}:8080": "0"}, 5,
               what="a path on a host a pattern names routed")
    eventually(lambda: f"container {thief.name} ({thief.short_id}): label warden.frontend: frontend "
                       "'pay.example.com/admin/' is on the host of service 'payments'; only a labelFrontends "
                       "pattern that names 'pay.example.com' itself allows it" in w.log(), 5, what="refused")
    eventually(lambda: w.log().count("sweep (periodic)") >= 2, 5, what="sweeps")
    assert redx.get("frontend:pay.example.com/admin/") is None
    assert redx.hgetall(f"backend:admin-{RUN}") == {}
    assert redx.get("frontend:pay.example.com") == "payments"
    assert redx.hgetall("backend:payments") == {f"{ip_of(real)}:8080": "0"}


def test_a_label_takes_no_key_an_operator_wrote(redx, containers, warden):
    """A frontend an operator wrote by hand was taken over at the next sweep and
    deleted when the container went; ``warden.backend=static-admin`` joined a backend of
    static servers. Keys that hold what Warden did not write are refused, untouched."""
    redx.set("frontend:hand.example.com", "static")
    redx.hset("backend:static", mapping={"192.0.2.10:80": "0"})
    redx.hset("backend:static-admin", mapping={"192.0.2.11:80": "0", "_config": "x"})
    before = {key: (redx.get(key) if redx.type(key) == "string" else redx.hgetall(key))
              for key in redx.keys("*")}
    w = warden([], registrarSleepTimeSeconds=0.5, **ALLOWED).start()
    frontend = containers.run("hand", labels=labels(f"hand-{RUN}", "hand.example.com"))
    backend = containers.run("admin", labels=labels(f"adm-{RUN}", "admin.example.com", backend="static-admin"))
    fine = containers.run("fine", labels=labels(f"fine-{RUN}", "fine.example.com"))
    eventually(lambda: redx.hgetall(f"backend:fine-{RUN}") == {f"{ip_of(fine)}:8080": "0"}, 5, what="routed")
    for c, why in ((frontend, "label warden.frontend: frontend:hand.example.com names backend 'static', "
                              "which Warden did not write"),
                   (backend, "label warden.backend: backend:static-admin holds servers Warden did not "
                             "write (192.0.2.11:80)")):
        eventually(lambda: f"container {c.name} ({c.short_id}): {why}" in w.log(), 5, what="refused")
    eventually(lambda: w.log().count("sweep (periodic)") >= 2, 5, what="sweeps")
    validate = w.command("validate").stdout
    assert "frontend:hand.example.com names backend 'static'" in validate
    assert "backend:static-admin holds servers Warden did not write" in validate
    assert f"container {fine.name}" not in validate
    frontend.kill()
    backend.kill()
    sweeps = w.log().count("sweep (periodic)")
    eventually(lambda: w.log().count("sweep (periodic)") >= sweeps + 2, 5, what="sweeps after they went")
    after = {key: (redx.get(key) if redx.type(key) == "string" else redx.hgetall(key))
             for key in redx.keys("*") if "fine" not in key}
    assert after == before


def test_a_label_names_only_the_load_balancers_the_operator_allows(redx, containers, warden, cloud):
    """Any load balancer and any target-group ARN was accepted from a label: a
    container could enrol the host anywhere. ``labelLoadBalancers`` lists what labels
    may name; the container is refused as a whole otherwise."""
    w = warden([], instanceId=cloud.instance_id, registrarSleepTimeSeconds=0.5,
               labelLoadBalancers=["team-*", "arn:aws:elasticloadbalancing:*:targetgroup/team-*"],
               **ALLOWED).start()
    elb = containers.run("elb", labels=labels(f"elb-{RUN}", "elb.example.com", load_balancer=cloud.elb_name))
    arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/payments/0123456789abcdef"
    tg = containers.run("tg", labels=labels(f"tg-{RUN}", "tg.example.com", target_group=arn))
    eventually(lambda: f"container {elb.name} ({elb.short_id}): label warden.load-balancer: load balancer "
                       f"'{cloud.elb_name}' matches no labelLoadBalancers pattern" in w.log(), 5, what="refused")
    eventually(lambda: f"container {tg.name} ({tg.short_id}): label warden.target-group: target group "
                       f"'{arn}' matches no labelLoadBalancers pattern" in w.log(), 5, what="refused")
    eventually(lambda: w.log().count("sweep (periodic)") >= 2, 5, what="sweeps")
    assert not cloud.in_elb()
    assert redx.hgetall(f"backend:elb-{RUN}") == {} and redx.hgetall(f"backend:tg-{RUN}") == {}


def test_one_label_alone_does_not_join_a_label_defined_service(redx, containers, warden):
    """A container with only ``warden.service=<name>`` took a share of a label-defined
    service's traffic: such services took any container that named them."""
    w = warden([], registrarSleepTimeSeconds=0.5, **ALLOWED).start()
    first = containers.run("a", labels=labels(f"shop-{RUN}", "shop.example.com"))
    backend = f"backend:shop-{RUN}"
    eventually(lambda: f"{ip_of(first)}:8080" in redx.hgetall(backend), 5, what="the defining one routed")
    joiner = containers.run("j", labels={"warden.service": f"shop-{RUN}"})
    same = containers.run("a", labels=labels(f"shop-{RUN}", "shop.example.com"))
    eventually(lambda: f"{ip_of(same)}:8080" in redx.hgetall(backend), 5, what="one defining it alike routed")
    eventually(lambda: w.log().count("sweep (periodic)") >= 2, 5, what="sweeps")
    assert set(redx.hgetall(backend)) == {f"{ip_of(first)}:8080", f"{ip_of(same)}:8080"}, \
        "the container with the service label alone joined"
    assert ip_of(joiner)
