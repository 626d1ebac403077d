"""Services declared by the containers themselves, through labels: real Docker, a real
Redx Redis, ELB enrolment through the moto server."""

from __future__ import annotations

import json

from conftest import RUN, eventually, ip_of


def labels(service: str, frontend: str, port: str = "8080", **more: str) -> dict:
    found = {"warden.service": service, "warden.frontend": frontend, "warden.port": port}
    found.update({f"warden.{k.replace('_', '-')}": v for k, v in more.items()})
    return found


def test_a_labelled_container_defines_its_route_and_enrolment(redx, containers, warden, cloud):
    w = warden([], instanceId=cloud.instance_id).start()
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
    w = warden([web], registrarSleepTimeSeconds=0.5).start()
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
    warden([]).start()
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
    w = warden([]).start()
    bad = {
        "port": containers.run("p", labels=labels(f"p-{RUN}", "p.example.com", "eighty")),
        "frontend": containers.run("f", labels=labels(f"f-{RUN}", "http://f.example.com")),
        "readiness": containers.run("r", labels=labels(f"r-{RUN}", "r.example.com", readiness="maybe")),
    }
    good = containers.run("g", labels=labels(f"g-{RUN}", "g.example.com", readiness="http:/"))
    eventually(lambda: f"{ip_of(good)}:8080" in redx.hgetall(f"backend:g-{RUN}"), 5, what="the good one")
    for label, container in bad.items():
        eventually(lambda: f"container {container.name} ({container.short_id}): label warden.{label}:"
                   in w.log(), 5, what=f"the {label} problem logged")
    for name in ("p", "f", "r"):
        assert redx.hgetall(f"backend:{name}-{RUN}") == {}
    assert "'eighty' is not a port number" in w.log()
    assert "must be host or host/path/ (no scheme)" in w.log()


def test_container_labels_off_routes_nothing_by_labels(redx, containers, warden):
    w = warden([], containerLabels="off").start()
    c = containers.run("off", labels=labels(f"off-{RUN}", "off.example.com"))
    later = containers.run("later")  # events are handled in order
    eventually(lambda: f"docker event container start {later.id[:12]}" in w.log(), 5, what="events seen")
    assert redx.hgetall(f"backend:off-{RUN}") == {} and ip_of(c)
    assert w.command("validate", check=True).stdout == ""


def test_a_restarted_warden_routes_labelled_containers_from_its_first_listing(redx, containers, warden):
    c = containers.run("early", labels=labels(f"early-{RUN}", "early.example.com"))
    w = warden([]).start()
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
    w = warden([], registrarSleepTimeSeconds=600).start()
    old = containers.run("roll", labels=labels(f"roll-{RUN}", "roll.example.com"))
    eventually(lambda: redx.hgetall(f"backend:roll-{RUN}") == {f"{ip_of(old)}:8080": "0"}, 5, what="A routed")
    new = containers.run("roll", labels=labels(f"roll-{RUN}", "roll.example.com", "9000"))
    eventually(lambda: "defines service" in w.log(), 5, what="B refused while A stands")
    old.kill()
    eventually(lambda: redx.hgetall(f"backend:roll-{RUN}") == {f"{ip_of(new)}:9000": "0"}, 5,
               what="B routed once its definition stands")
    assert redx.get("frontend:roll.example.com") == f"roll-{RUN}"

    member = containers.run("member", labels={"warden.service": f"late-{RUN}"})
    definer = containers.run("definer", labels=labels(f"late-{RUN}", "late.example.com"))
    eventually(lambda: set(redx.hgetall(f"backend:late-{RUN}")) == {f"{ip_of(member)}:8080",
                                                                      f"{ip_of(definer)}:8080"}, 5,
               what="the member routed once its service is defined")
    assert w.log().count("sweep (periodic)") == 0


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
