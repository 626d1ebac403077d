"""Which service claims a container and which address it is routed at (no Docker
needed: containers here are the records the Docker subscriber makes)."""

from __future__ import annotations

from warden.model import Attachment, Container, Ownership, PublishedPort
from warden.services import Service
import ipaddress


def container(**kw) -> Container:
    base = dict(id="c" * 64, name="shop-web-1", image="acme/shop:3")
    base.update(kw)
    return Container(**base)


def test_a_label_narrows_and_names_match_by_substring():
    labelled = container(labels={"warden.service": "api"})
    assert not Service("api", 80).claims(labelled), "a label alone joins no file-defined service"
    assert Service("api", 80, container_name="shop").claims(labelled)
    assert Service("api", 80, label_members="any").claims(labelled), "unless it opts in"
    assert not Service("web", 80, container_name="shop").claims(labelled)
    assert Service("web", 80, container_name="shop-web").claims(container())
    assert Service("img", 80, container_name="acme/shop").claims(container())
    assert not Service("none", 80).claims(container()), "an empty containerName claims nothing"


def test_address_prefers_bridge_then_first_network_by_name():
    both = container(attachments=(Attachment("zeta", "10.9.0.2"), Attachment("bridge", "172.17.0.5"),
                                  Attachment("alpha", "10.8.0.2")))
    assert Service("web", 8080).address_of(both, "127.0.0.1") == ("172.17.0.5:8080", "")
    no_bridge = container(attachments=(Attachment("zeta", "10.9.0.2"), Attachment("alpha", "10.8.0.2")))
    assert Service("web", 8080).address_of(no_bridge, "127.0.0.1") == ("10.8.0.2:8080", "")
    assert Service("web", 8080, network="zeta").address_of(no_bridge, "127.0.0.1") == ("10.9.0.2:8080", "")
    address, why = Service("web", 8080, network="other").address_of(no_bridge, "127.0.0.1")
    assert address is None and "not attached to network 'other'" in why


def test_ipv6_only_and_published_ports():
    v6 = container(attachments=(Attachment("v6net", "", "fd00::5"),))
    assert Service("web", 80).address_of(v6, "127.0.0.1") == ("[fd00::5]:80", "")
    published = container(ports=(PublishedPort(8080, "tcp", 32768),))
    service = Service("web", 8080, published_port=True)
    assert service.address_of(published, "10.0.0.7") == ("10.0.0.7:32768", "")
    address, why = Service("web", 9000, published_port=True).address_of(published, "10.0.0.7")
    assert address is None and "not published" in why


def test_ownership_covers_docker_subnets_and_published_host_ports_only():
    owned = Ownership((ipaddress.ip_network("172.17.0.0/16"), ipaddress.ip_network("fd00::/64")),
                      "10.0.0.7", frozenset({"pub"}))
    assert owned.owns("web", "172.17.3.4:80")
    assert owned.owns("web", "[fd00::5]:80")
    assert not owned.owns("web", "10.200.0.5:80"), "a static fallback outside Docker's networks"
    assert not owned.owns("web", "10.0.0.7:32768"), "hostAddress is owned only for published services"
    assert owned.owns("pub", "10.0.0.7:32768")
    assert not owned.owns("web", "_sticky") and not owned.owns("web", "example.com:80")
