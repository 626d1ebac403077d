"""The Registrar's host view and its services in force, with no Docker, Redis or
thread: which routes a container gets, when they go (at kill or stop, before die), when
this instance enrols in a load balancer and leaves it, and what a change of services
retires."""

from __future__ import annotations

from warden.labels import LabelPolicy
from warden.model import Attachment, Container, ContainerEvent, LoadBalancerTarget, Ownership, Route
from warden.registrar.in_force import ServicesInForce, changed
from warden.registrar.view import Diff, HostView
from warden.services import Service

WEB = Service(name="web", port=8080, backend_name="web", container_name="web", load_balancer_name="web-elb",
              load_balancer_url="web.example.com")
API = Service(name="api", port=9000, backend_name="api", container_name="api")
SERVICES = (WEB, API)
ELB = LoadBalancerTarget("elb", "web-elb")


def container(n: int, image: str = "web", **kw: object) -> Container:
    return Container(id=f"{n:064x}", name=f"c{n}", image=image,
                     attachments=(Attachment("bridge", f"172.17.0.{n}"),), **kw)  # type: ignore[arg-type]


def ready(c: Container, s: Service) -> tuple[bool, str]:
    return True, ""


def started(view: HostView, c: Container, at: float = 1.0) -> Diff:
    view.apply(ContainerEvent("start", c.id, at), c)
    return view.update(c.id, SERVICES, (), ready)


def test_the_first_container_of_a_service_routes_and_enrols_and_the_second_only_routes():
    view = HostView("10.0.0.5", "warden.service")
    one = container(2)
    assert started(view, one) == Diff(added=(Route("web", "172.17.0.2:8080", "web", one.id),), enrol=(ELB,))
    two = container(3)
    assert started(view, two) == Diff(added=(Route("web", "172.17.0.3:8080", "web", two.id),))
    assert view.desired(SERVICES, Ownership((), "10.0.0.5")).backends == {
        "web": frozenset({"172.17.0.2:8080", "172.17.0.3:8080"}), "api": frozenset()}
    assert view.routed_backends() == frozenset({"web"})


def test_a_kill_or_stop_unroutes_at_once_and_the_last_one_leaves_the_load_balancer():
    view = HostView("10.0.0.5", "warden.service")
    one, two = container(2), container(3)
    started(view, one)
    started(view, two)
    view.apply(ContainerEvent("kill", one.id, 2.0, stopping=True), None)
    assert view.update(one.id, SERVICES, (), ready) == Diff(removed=(Route("web", "172.17.0.2:8080", "web", one.id),))
    view.apply(ContainerEvent("die", one.id, 2.1), None)
    assert view.update(one.id, SERVICES, (), ready) == Diff(), "nothing left to do at die"
    view.apply(ContainerEvent("stop", two.id, 3.0, stopping=True), None)
    assert view.update(two.id, SERVICES, (), ready) == Diff(removed=(Route("web", "172.17.0.3:8080", "web", two.id),),
                                                              leave=(ELB,))
    view.apply(ContainerEvent("start", two.id, 4.0), two)
    assert view.update(two.id, SERVICES, (), ready).enrol == (ELB,), "a start after a stop routes again"


def test_paused_unhealthy_refused_or_unready_containers_get_no_route_and_say_why_when_worth_it():
    view = HostView("10.0.0.5", "warden.service")
    for c in (container(2, paused=True), container(3, health="starting"), container(4, health="unhealthy")):
        assert started(view, c) == Diff()
    refused = container(5)
    view.apply(ContainerEvent("start", refused.id, 1.0), refused)
    assert view.update(refused.id, SERVICES, (refused.id,), ready) == Diff()
    waiting = container(6)
    view.apply(ContainerEvent("start", waiting.id, 1.0), waiting)
    diff = view.update(waiting.id, SERVICES, (), lambda c, s: (False, ""))
    assert diff == Diff() and view.started_at[waiting.id] == 1.0, "the start time waits with the probe"
    nowhere = Container(id="f" * 64, name="web-x", image="web")
    view.apply(ContainerEvent("start", nowhere.id, 1.0), nowhere)
    diff = view.update(nowhere.id, SERVICES, (), ready)
    assert [(u.service.name, u.why) for u in diff.unrouted] == [("web", "has no network address")]


def test_two_containers_serving_one_address_keep_the_route_until_both_are_gone():
    view = HostView("10.0.0.5", "warden.service")
    shared = (Attachment("host", "10.0.0.5"),)
    a = Container(id="a" * 64, name="web-a", image="web", attachments=shared)
    b = Container(id="b" * 64, name="web-b", image="web", attachments=shared)
    assert started(view, a).added
    assert started(view, b).added == ()
    view.apply(ContainerEvent("die", a.id, 2.0), None)
    assert view.update(a.id, SERVICES, (), ready).removed == (), "b still serves it"


def test_a_listing_replaces_the_view_and_forgets_the_containers_gone():
    view = HostView("10.0.0.5", "warden.service")
    one, two = container(2), container(3)
    started(view, one)
    view.apply(ContainerEvent("kill", one.id, 2.0, stopping=True), None)
    view.relist({two.id: two})
    assert view.being_stopped == set() and set(view.containers) == {two.id}
    view.route_all(SERVICES, (), ready)
    assert set(view.routes) == {two.id}


def test_services_in_force_retire_what_the_new_ones_no_longer_name():
    in_force = ServicesInForce(SERVICES, "warden.", LabelPolicy())
    assert in_force.replace(SERVICES, Ownership((), "")) is None, "nothing changed"
    retired = in_force.replace((API,), Ownership((), ""))
    assert retired is not None and in_force.services == (API,)
    assert (retired.frontends, set(retired.backends), retired.targets) == (
        {"web.example.com": "web"}, {"web"}, {ELB: False})
    assert changed(SERVICES, (API,)) == {"web"}


def test_a_container_that_defines_a_service_by_labels_is_refused_once_without_a_pattern():
    in_force = ServicesInForce((), "warden.", LabelPolicy())
    labelled = Container(id="c" * 64, name="shop", image="shop", labels={
        "warden.service": "shop", "warden.frontend": "shop.example.com", "warden.port": "8080"})
    first = in_force.relabel([labelled], lambda s: None)
    assert len(first) == 1 and "labelFrontends" in str(first[0])
    assert in_force.relabel([labelled], lambda s: None) == [], "said once"
    open_policy = ServicesInForce((), "warden.", LabelPolicy(frontends=("*.example.com",)))
    assert open_policy.relabel([labelled], lambda s: None) == []
    assert [s.name for s in open_policy.combined()] == ["shop"]


GROUP = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/shop/0123456789abcdef"
SHOP = Service(name="shop", port=8080, backend_name="shop", container_name="shop", target_group_arn=GROUP,
               target_mode="container", load_balancer_name="shop-elb")


def test_each_routed_container_of_a_container_mode_service_is_a_target_until_its_kill():
    from warden.model import ContainerTarget, PublishedPort

    view = HostView("10.0.0.5", "warden.service")
    one = container(2, image="shop", ports=(PublishedPort(8080, "tcp", 32768),))
    two = container(3, image="shop")
    view.apply(ContainerEvent("start", one.id, 1.0), one)
    first = view.update(one.id, (SHOP,), (), ready)
    target = ContainerTarget(GROUP, one.id, "172.17.0.2", 8080, 32768, "shop")
    assert first.register == (target,)
    # The classic ELB still enrols the instance; the target group is not a host-mode one.
    assert first.enrol == (LoadBalancerTarget("elb", "shop-elb"),)
    view.apply(ContainerEvent("start", two.id, 1.5), two)
    assert view.update(two.id, (SHOP,), (), ready).register == (ContainerTarget(GROUP, two.id, "172.17.0.3", 8080),)
    assert view.desired((SHOP,), Ownership((), "10.0.0.5")).members == {
        GROUP: frozenset({target, ContainerTarget(GROUP, two.id, "172.17.0.3", 8080)})}
    assert view.desired((SHOP,), Ownership((), "10.0.0.5")).targets == {LoadBalancerTarget("elb", "shop-elb"): True}

    view.apply(ContainerEvent("kill", one.id, 2.0, stopping=True), None)
    assert view.update(one.id, (SHOP,), (), ready).deregister == (target,), "deregistered at the kill"
    view.apply(ContainerEvent("die", one.id, 2.1), None)
    assert view.update(one.id, (SHOP,), (), ready) == Diff()

    # An instance group takes instanceId:hostPort; an ip group the container's own address.
    assert target.aws_target("instance", "i-0abc") == (("i-0abc", 32768), "")
    assert target.aws_target("ip", "i-0abc") == (("172.17.0.2", 8080), "")
    unpublished = ContainerTarget(GROUP, two.id, "172.17.0.3", 8080)
    key, why = unpublished.aws_target("instance", "i-0abc")
    assert key is None and "port 8080 is not published" in why
    key, why = target.aws_target("lambda", "i-0abc")
    assert key is None and "needs an instance or ip group" in why


def test_target_mode_is_host_or_container_and_container_needs_a_group():
    import json

    from warden.jsonfile import loads
    from warden.services import parse_service

    def problems(**fields: object) -> list[str]:
        _, found = parse_service("services.json", "", loads(json.dumps({"name": "shop", "port": 8080, **fields})))
        return [str(p) for p in found if not p.warning]

    assert problems(targetMode="pod") == ['services.json: targetMode: must be "host" or "container"']
    assert problems(targetMode="container") == [
        'services.json: targetMode: "container" needs a targetGroupArn: each container is a target of that group']
    service, _ = parse_service("services.json", "", loads(json.dumps(
        {"name": "shop", "port": 8080, "targetGroupArn": GROUP, "targetMode": "Container"})))
    assert service is not None and service.member_group == GROUP and service.targets == ()
