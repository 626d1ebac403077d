"""SIGHUP, as ``systemctl reload`` sends it: the service files are read again, a
config file that changed is read and the keys that need a restart are named, a broken
one keeps the configuration in force; the process, and its leadership, go on."""

from __future__ import annotations

import json
import signal

from conftest import eventually


def leader(central) -> tuple[str, str]:
    record = central.hgetall("service-manager")
    return record.get("id", ""), record.get("epoch", "")


def test_sighup_reads_the_files_again_names_what_needs_a_restart_and_changes_no_leader(managers, central):
    web = {"name": "web", "containerName": "web", "port": 8080}
    m = managers("i-hup", services=[web])
    eventually(lambda: leader(central)[0] == "i-hup", 15, what="the manager leads")
    held = leader(central)

    m.write_services("services.json", [web, {"name": "api", "containerName": "api", "port": 9000}])
    settings = json.loads(m.config_path.read_text())
    m.config_path.write_text(json.dumps(dict(settings, leaseSeconds=3, guardTimeSeconds=0.7)))
    m.process.send_signal(signal.SIGHUP)
    eventually(lambda: m.process.poll() is not None or "take effect at the next restart" in m.log(), 10,
               what="the reload said what it did")
    assert m.process.poll() is None, f"SIGHUP ended the process: exit {m.process.poll()}"
    line = next(x for x in m.log().splitlines() if "take effect at the next restart" in x)
    assert "guardTimeSeconds, leaseSeconds" in line, line
    assert "service files read again: 2 service(s)" in m.log()

    m.config_path.write_text("{ not json")
    m.process.send_signal(signal.SIGHUP)
    eventually(lambda: "the configuration in force stays" in m.log(), 10, what="a broken config refused")
    assert m.process.poll() is None
    assert leader(central) == held, "a reload changed the leadership"
    assert m.stop() == 0


def test_metrics_serve_on_an_ipv6_address_in_brackets(managers, central):
    """``[::1]:9723`` ended the start: the brackets went to the socket as part of the
    host name (``cannot serve metrics on [::1]:9723: [Errno -2] Name or service not
    known``)."""
    from conftest import free_port, http_get

    port = free_port()
    m = managers("i-v6", metricsAddress=f"[::1]:{port}")
    eventually(lambda: http_get(f"http://[::1]:{port}/livez")[0] == 200, 10, what="/livez on [::1]")
    assert f"metrics on http://[::1]:{port}/metrics" in m.log()


def test_sighup_applies_new_label_patterns_without_a_restart(redx, containers, warden):
    """The label allow-lists change live: a container refused for want of a
    labelFrontends pattern is routed once the pattern is in the file and SIGHUP is
    sent; the other changed keys are still named for the next restart."""
    from conftest import RUN, ip_of

    w = warden([], registrarSleepTimeSeconds=60).start()
    shop = containers.run("shop", labels={"warden.service": f"shop-{RUN}", "warden.frontend": "shop.example.com",
                                          "warden.port": "8080"})
    eventually(lambda: "labelFrontends allows no frontend" in w.log(), 5, what="refused at first")
    settings = json.loads(w.config_path.read_text())
    w.config_path.write_text(json.dumps(dict(settings, labelFrontends=["shop.example.com"], leaseSeconds=3)))
    w.process.send_signal(signal.SIGHUP)
    eventually(lambda: f"{ip_of(shop)}:8080" in redx.hgetall(f"backend:shop-{RUN}"), 10,
               what="routed after SIGHUP, with no restart")
    assert redx.get("frontend:shop.example.com") == f"shop-{RUN}"
    assert "SIGHUP: applied labelFrontends" in w.log()
    line = next(x for x in w.log().splitlines() if "take effect at the next restart" in x)
    assert "leaseSeconds" in line and "labelFrontends" not in line, line


def test_sighup_applies_alerts_and_the_log_format_live(managers, central, webhook):
    """``alerts`` and ``logFormat`` change without a restart; ``logLevel`` given by
    ``--log-level`` (as the test processes are started) stays, and the log says so."""
    from warden.control import encode

    m = managers("i-hup-alerts", managerSleepTimeSeconds=600,
                 alerts={"webhookUrl": webhook.url, "events": ["leadership"]})
    eventually(lambda: any(a["event"] == "leadership-gained" for a in webhook.bodies), 10, what="first alert")

    settings = json.loads(m.config_path.read_text())
    m.config_path.write_text(json.dumps(dict(settings, alerts={"webhookUrl": webhook.url, "events": ["drain"]},
                                             logFormat="json", logLevel="error")))
    m.process.send_signal(signal.SIGHUP)
    eventually(lambda: '"msg": "SIGHUP: applied alerts, logFormat, logLevel"' in m.log(), 10,
               what="the reload applied the alerts and the log settings")
    assert '"msg": "SIGHUP: logLevel stays debug, as --log-level gave it"' in m.log()
    assert "take effect at the next restart" not in m.log()

    central.set("warden:drain:i-hup-alerts", json.dumps({"reason": "spot interruption", "lifecycle": None}))
    central.publish("warden:drain", encode("drain", "i-hup-alerts", "", 0, None))
    eventually(lambda: any(a["event"] == "host-draining" for a in webhook.bodies), 10,
               what="a drain alert, an event the reloaded alerts ask for")
    assert m.stop() == 0
    assert not [a for a in webhook.bodies if a["event"] == "leadership-lost"], \
        "leadership alerts went on after SIGHUP took them out"
