"""What containers may define by labels, judged with no Docker and no Redis: the
label values, the operator's patterns, and the order in which definitions stand."""

from __future__ import annotations

from warden.labels import LabelPolicy, label_services, service_from_labels
from warden.model import Container
from warden.services import Service

PREFIX = "warden."
OPEN = LabelPolicy(frontends=("*.example.com", "*.example.com/*"))


def container(n: int, service: str, frontend: str = "", port: str = "8080", created: float = 0.0,
              **more: str) -> Container:
    labels = {"warden.service": service}
    if frontend:
        labels.update({"warden.frontend": frontend, "warden.port": port})
    labels.update({f"warden.{k.replace('_', '-')}": v for k, v in more.items()})
    return Container(id=f"{n:064x}", name=f"c{n}", image="app", labels=labels, created=created or float(n))


def problem(c: Container) -> str:
    _, found = service_from_labels(c, PREFIX)
    return found.message if found else ""


def test_a_frontend_is_a_host_name_and_a_plain_path():
    for frontend in ("*", "localhost/..", "a.example.com/x/../y", "a.example.com/./y", "a.example.com/*",
                     "a.example.com/[x]", "-a.example.com", "a..example.com", "a_b.example.com"):
        assert "must be a host name" in problem(container(1, "s", frontend)), frontend
    assert problem(container(1, "s", "http://a.example.com")).endswith("must be host or host/path/ (no scheme)")
    for frontend in ("a.example.com", "a.example.com:8443", "a.example.com/api/v2/", "localhost", "a-b.c9.io/x.y/"):
        assert problem(container(1, "s", frontend)) == "", frontend


def test_service_and_backend_names_are_plain_names():
    for name in ("<!channel>", "[x](https://e)", "a b", "é", "x" * 129):
        assert "must be a name of 1 to 128 letters" in problem(container(1, name, "a.example.com")), name
        assert "must be a name of 1 to 128 letters" in problem(
            container(1, "ok", "a.example.com", backend=name)), name
    assert problem(container(1, "web-1.v2:blue_x", "a.example.com", backend="b-1")) == ""


def test_without_patterns_no_container_defines_a_service():
    found = label_services([container(1, "shop", "shop.example.com")], [], PREFIX)
    assert found.services == ()
    [refused] = found.refused.values()
    assert refused.label == "warden.frontend"
    assert "labelFrontends allows no frontend" in refused.message


def test_patterns_match_the_whole_frontend_hosts_in_any_case():
    policy = LabelPolicy(frontends=("*.apps.example.com", "shop.example.com/api/*"))
    allowed = ["a.apps.example.com", "A.Apps.Example.com", "shop.example.com/api/", "shop.example.com/api/v2/"]
    refused = ["apps.example.com", "a.apps.example.com/x/", "shop.example.com", "shop.example.com/API/",
               "evil.example.com"]
    made = [container(n, f"s{n}", f) for n, f in enumerate(allowed + refused)]
    found = label_services(made, [], PREFIX, policy)
    assert sorted(s.frontend for s in found.services) == sorted(allowed)
    assert len(found.refused) == len(refused)
    assert all("matches no labelFrontends pattern" in p.message for p in found.refused.values())


def test_a_path_on_a_file_services_host_needs_a_pattern_naming_the_host():
    pay = Service(name="payments", port=80, load_balancer_url="pay.example.com", source="pay.json")
    thief = container(1, "admin", "pay.example.com/admin/")
    found = label_services([thief], [pay], PREFIX, OPEN)
    assert found.services == ()
    assert "is on the host of service 'payments'" in found.refused[thief.id].message
    named = LabelPolicy(frontends=("*.example.com/*", "pay.example.com/admin/*"))
    assert [s.name for s in label_services([thief], [pay], PREFIX, named).services] == ["admin"]


def test_load_balancers_and_target_groups_need_their_own_patterns():
    arn = "arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/team-a/0123"
    made = [container(1, "a", "a.example.com", load_balancer="team-a"),
            container(2, "b", "b.example.com", load_balancer="payments"),
            container(3, "c", "c.example.com", target_group=arn)]
    found = label_services(made, [], PREFIX, OPEN)
    assert found.services == ()
    assert "labelLoadBalancers allows none" in found.refused[made[0].id].message
    policy = LabelPolicy(OPEN.frontends, ("team-*", "arn:aws:elasticloadbalancing:*:targetgroup/team-*"))
    found = label_services(made, [], PREFIX, policy)
    assert sorted(s.name for s in found.services) == ["a", "c"]
    assert found.refused[made[1].id].label == "warden.load-balancer"


def test_the_first_definition_stands_and_files_win():
    web = Service(name="web", port=80, load_balancer_url="web.example.com", source="web.json")
    first = container(1, "a", "x.example.com", created=10.0)
    later_same = container(2, "a", "x.example.com", created=20.0)
    later_other_port = container(3, "a", "x.example.com", port="9000", created=30.0)
    thief = container(4, "t", "web.example.com", created=5.0)
    assigns = container(5, "web", "ignored.example.com")
    found = label_services([later_other_port, later_same, first, thief, assigns], [web], PREFIX, OPEN)
    assert [s.name for s in found.services] == ["a"]
    assert set(found.refused) == {later_other_port.id, thief.id}
    assert "belongs to service 'web'" in found.refused[thief.id].message


def test_a_store_is_asked_only_about_a_definition_not_yet_in_force():
    asked = []

    def objection(service: Service):
        asked.append(service.name)
        return ("warden.frontend", "held by someone else") if service.name == "b" else None

    a, b = container(1, "a", "a.example.com"), container(2, "b", "b.example.com")
    found = label_services([a, b], [], PREFIX, OPEN, objection)
    assert [s.name for s in found.services] == ["a"] and asked == ["a", "b"]
    assert found.refused[b.id].label == "warden.frontend"
    asked.clear()
    again = label_services([a, b], [], PREFIX, OPEN, objection, standing=found.services)
    assert asked == ["b"] and [s.name for s in again.services] == ["a"]


def test_a_label_makes_each_container_a_target_only_with_a_target_group():
    group = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/shop/0123456789abcdef"
    service, found = service_from_labels(container(1, "shop", "shop.example.com", target_group=group,
                                                   target_mode="container"), PREFIX)
    assert found is None and service is not None and service.member_group == group and service.targets == ()
    assert "must be host, or container with warden.target-group" in problem(
        container(1, "shop", "shop.example.com", target_mode="container"))
    assert "must be host, or container" in problem(
        container(1, "shop", "shop.example.com", target_group=group, target_mode="pod"))
