"""Which servers in a Redx backend are Warden's to change on this host."""

from __future__ import annotations

import ipaddress

from warden.model import Ownership


def test_only_this_hosts_container_addresses_and_its_published_ports():
    rule = Ownership((ipaddress.ip_network("172.17.0.0/16"), ipaddress.ip_network("fd00:1::/64")),
                     "10.0.0.5", frozenset({"pub"}))
    assert rule.owns("web", "172.17.0.9:8080") and rule.owns("web", "[fd00:1::9]:80")
    assert not rule.owns("web", "172.18.0.9:8080") and not rule.owns("web", "192.0.2.10:80")
    assert rule.owns("pub", "10.0.0.5:32768") and not rule.owns("web", "10.0.0.5:32768")
    for garbage in ("172.17.0.9", "host:80", ":80", "172.17.0.9:x", "_config"):
        assert not rule.owns("web", garbage), garbage


def test_a_published_port_service_adds_its_backend_and_no_other_does():
    rule = Ownership((ipaddress.ip_network("172.17.0.0/16"),), "10.0.0.5")
    assert rule.with_service("web", False) is rule
    pub = rule.with_service("pub", True)
    assert pub.owns("pub", "10.0.0.5:32768") and not rule.owns("pub", "10.0.0.5:32768")
    assert pub.with_service("pub", True) is pub
