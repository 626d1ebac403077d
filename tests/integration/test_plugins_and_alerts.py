"""Third-party handlers through entry points, and webhook alerts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from conftest import RUN, eventually, free_port, http_get, ip_of, serve_http
from warden.control import encode

PLUGIN = '''
from warden.handlers import Handler


class RouteLog(Handler):
    """Appends each route change to the file named by the config key routeLogPath."""

    name = "routelog"
    roles = frozenset({"registrar"})

    def on_route_added(self, sender, *, route, container, **kw):
        self._write(f"+ {container.name} {route.backend} {route.address}")

    def on_route_removed(self, sender, *, route, **kw):
        self._write(f"- {route.backend} {route.address}")

    def _write(self, line):
        with open(self.config.extra["routeLogPath"], "a") as handle:
            handle.write(line + "\\n")
'''


def build_plugin(folder: Path, name: str, module_text: str) -> Path:
    """Install a plugin package into a folder of its own (put on PYTHONPATH)."""
    source = folder / f"{name}-src"
    (source / name).mkdir(parents=True)
    (source / name / "__init__.py").write_text(module_text)
    (source / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n')
    (source / "setup.cfg").write_text(
        f"[metadata]\nname = {name}\nversion = 1.0\n\n[options]\npackages = {name}\n\n"
        f"[options.entry_points]\nwarden.handlers =\n    {name.split('_')[-1]} = {name}:RouteLog\n")
    target = folder / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True)
    return target


def test_a_plugin_package_receives_real_signals(tmp_path, redx, containers, warden):
    site = build_plugin(tmp_path, "warden_routelog", PLUGIN)
    log = tmp_path / "routes.log"
    w = warden([{"name": "web", "containerName": f"wt-{RUN}-web", "port": 8080}],
               handlers=["redx", "routelog"], routeLogPath=str(log))
    w.env["PYTHONPATH"] = str(site)
    w.start()
    c = containers.run("web")
    address = f"{ip_of(c)}:8080"
    eventually(lambda: log.exists() and f"+ {c.name} web {address}" in log.read_text(), 5,
               what="the plugin saw the route")
    c.remove(force=True)
    eventually(lambda: f"- web {address}" in log.read_text(), 5, what="the plugin saw it go")


def test_a_plugin_that_fails_to_import_is_named(tmp_path, redx, warden):
    site = build_plugin(tmp_path, "warden_broken", "raise ImportError('needs libfoo')\n")
    w = warden([{"name": "web", "port": 80}], handlers=["redx", "broken"])
    w.env["PYTHONPATH"] = str(site)
    result = w.command("sweep")
    assert result.returncode == 2
    assert "handler 'broken' failed to load from warden_broken:RouteLog: ImportError: needs libfoo" \
        in result.stderr
    w = warden([{"name": "web", "port": 80}], handlers=["redx", "nosuch"])
    result = w.command("sweep")
    assert result.returncode == 2 and "handler 'nosuch': no entry point" in result.stderr


def test_leadership_alerts_reach_the_webhook(central, managers, webhook):
    url, received = webhook.url, webhook.bodies
    m = managers("i-alert", alerts={"webhookUrl": url, "events": ["leadership"]})
    eventually(lambda: any(a["event"] == "leadership-gained" for a in received), 10, what="alert")
    gained = next(a for a in received if a["event"] == "leadership-gained")
    assert gained["kind"] == "leadership" and gained["instanceId"] == "i-alert"
    assert gained["text"].startswith("[warden i-alert] i-alert is now the leader (epoch ")
    assert m.stop() == 0
    lost = [a for a in received if a["event"] == "leadership-lost"]
    assert lost and "shutdown" in lost[0]["text"]


def test_an_unreachable_webhook_is_retried_then_dropped_and_counted(central, managers):
    port = free_port()
    m = managers("i-alert", alerts={"webhookUrl": f"http://127.0.0.1:{free_port()}/hook"},
                 metricsAddress=f"127.0.0.1:{port}")
    eventually(lambda: "alert dropped after 4 attempts" in m.log(), 12, what="the drop logged")
    assert central.hget("service-manager", "id") == "i-alert", "the leader carries on"
    assert "warden_alerts_dropped_total 1.0" in http_get(f"http://127.0.0.1:{port}/metrics")[1]


def test_a_garbage_reply_never_ends_the_alert_sender(redx, containers, warden):
    """Defect 15: a reply that is not HTTP raised past the sender's except clause and
    its thread died: no alert was ever sent again."""
    from conftest import RUN, ip_of

    received: list[dict] = []

    class Garbage(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length))
            if not received and not getattr(Garbage, "garbled", False):
                Garbage.garbled = True
                self.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")
                return
            received.append(body)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    with serve_http(Garbage) as url:
        w = warden([{"name": "web", "containerName": f"wt-{RUN}-web", "port": 8080,
                     "loadBalancerUrl": "web.example.com"}],
                   handlers=["redx"], alerts={"webhookUrl": f"{url}/hook", "events": ["routes"]}).start()
        first = containers.run("web")
        second = containers.run("web")
        for c in (first, second):
            address = f"{ip_of(c)}:8080"
            eventually(lambda: any(address in a["text"] for a in received), 10,
                       what=f"the alert for {c.name}")
        assert Garbage.garbled
        w.stop()
    assert "Traceback" not in w.log()


SLACK = '{"text": "$text"}'
PAGERDUTY = ('{"routing_key": "R0UT1NG", "event_action": "$action", "dedup_key": "$key", '
             '"payload": {"summary": "$text", "source": "$instanceId", "severity": "$severity"}}')


def _failing_metric(central, managers, alerts):
    service = {"name": "web", "port": 80, "taskName": "web", "scaling": {"maxTasks": 3},
               "metric": {"type": "redis", "key": "demand:web"}}
    central.set("demand:web", "lots")
    port = free_port()
    m = managers("i-alert", services=[service], managerSleepTimeSeconds=0.2, alerts=alerts,
                 metricsAddress=f"127.0.0.1:{port}")
    m.metrics_port = port
    return m


def metric_failures(m) -> float:
    """warden_metric_failures_total{service="web"} as ``m`` serves it."""
    for line in http_get(f"http://127.0.0.1:{m.metrics_port}/metrics")[1].splitlines():
        if line.startswith('warden_metric_failures_total{service="web"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_condition_alerts_when_it_starts_and_when_it_clears_not_every_pass(central, managers, webhook):
    url, received = webhook.url, webhook.bodies
    m = _failing_metric(central, managers, {"webhookUrl": url, "events": ["errors"], "template": SLACK})
    eventually(lambda: metric_failures(m) >= 5, 15, what="five failing passes")
    assert m.log().count("scaling web holds") == 1, "logged once, then once a minute with a count"
    assert received == [
        {"text": "[warden i-alert] web: metric unreadable, count held: "
                 "redis key demand:web is not a number: 'lots'"}], "one alert, not one a pass"
    central.set("demand:web", "2")
    eventually(lambda: len(received) == 2, 10, what="the resolved alert")
    print("\nSlack bodies as POSTed:", *(json.dumps(body) for body in received), sep="\n")
    resolved = received[1]["text"]
    assert resolved.startswith("[warden i-alert] web: metric readable again (after ")
    assert " failed passes)" in resolved
    time.sleep(1)
    assert len(received) == 2, "nothing more while it stays readable"


def test_a_template_and_headers_speak_the_pagerduty_events_api(central, managers, webhook):
    url, received = webhook.url, webhook.bodies
    m = _failing_metric(central, managers, {"webhookUrl": url, "events": ["errors"], "template": PAGERDUTY,
                                            "headers": {"X-Warden-Token": "s3cret"}})
    eventually(lambda: len(received) == 1, 15, what="the trigger")
    central.set("demand:web", "1")
    eventually(lambda: len(received) == 2, 10, what="the resolve")
    (trigger, resolve), headers = received, webhook.headers[0]
    assert headers["X-Warden-Token"] == "s3cret" and headers["Content-Type"] == "application/json"
    assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
    assert trigger["dedup_key"] == resolve["dedup_key"] == "warden:metric-failed:web"
    assert trigger["payload"]["severity"] == "error" and trigger["payload"]["source"] == "i-alert"
    assert trigger["routing_key"] == "R0UT1NG"
    print("\nPagerDuty trigger as POSTed:", json.dumps(trigger))
    assert m.stop() == 0


def test_a_template_that_gives_no_json_is_refused(tmp_path, warden):
    w = warden([{"name": "web", "port": 80}], alerts={"webhookUrl": "https://hooks.example.com/x",
                                                      "template": '{"text": $text}'})
    result = w.command("validate")
    assert result.returncode == 2
    assert "alerts.template: does not give a JSON body: Expecting value" in result.stdout


def test_a_drain_alerts(central, managers, webhook):
    url, received = webhook.url, webhook.bodies
    m = managers("i-drain", managerSleepTimeSeconds=600, alerts={"webhookUrl": url})
    eventually(lambda: central.hget("service-manager", "id") == "i-drain", 10, what="leading")
    central.set("warden:drain:i-drain", json.dumps({"reason": "spot interruption", "lifecycle": None}))
    central.publish("warden:drain", encode("drain", "i-drain", "", 0, None))
    eventually(lambda: any(body["event"] == "host-draining" for body in received), 10, what="the alert")
    [drain] = [body for body in received if body["event"] == "host-draining"]
    assert drain["kind"] == "drain" and drain["severity"] == "warning"
    assert drain["text"] == "[warden i-drain] this host is draining: spot interruption"
    assert m.stop() == 0


def test_a_repeating_handler_error_alerts_once_per_quiet_period_with_a_count(tmp_path):
    from warden.config import load_config
    from warden.handlers.alerts import AlertsHandler

    class Quick(AlertsHandler):
        quiet_seconds = 0.3

    (tmp_path / "config.json").write_text(json.dumps({"alerts": {"webhookUrl": "http://127.0.0.1:1/hook",
                                                                  "events": ["errors"]}}))
    config, _ = load_config(str(tmp_path / "config.json"))
    handler = Quick(config)  # not started: what it would send stays in its queue
    for _ in range(3):
        handler.on_handler_error(None, signal_name="sweep", receiver="plugin.on_sweep", error="boom")
    time.sleep(0.35)
    handler.on_handler_error(None, signal_name="sweep", receiver="plugin.on_sweep", error="boom")
    sent = []
    while not handler.queue.empty():
        sent.append(handler.queue.get_nowait())
    assert [(body["text"], body["count"]) for body in sent] == [
        ("[warden] plugin.on_sweep failed on sweep: boom", 1),
        ("[warden] plugin.on_sweep failed on sweep: boom (x3 since the last alert)", 3)]


@pytest.mark.parametrize("how", ["kill -9", "stop"])
def test_a_condition_fired_by_one_leader_is_resolved_by_the_next(central, managers, webhook, how):
    """Leader A fires metric-failed:web; the metric recovers as A goes. The next leader
    reads it fine from its first pass: it must still resolve what A fired, once, or the
    incident (dedup key without an instance id) stays open for ever."""
    received = webhook.bodies
    service = {"name": "web", "port": 80, "taskName": "web", "scaling": {"maxTasks": 3},
               "metric": {"type": "redis", "key": "demand:web"}}
    alerts = {"webhookUrl": webhook.url, "events": ["errors"], "template": PAGERDUTY}
    central.set("demand:web", "lots")
    first = managers("i-a", services=[service], managerSleepTimeSeconds=0.2, alerts=alerts)
    eventually(lambda: "leadership gained" in first.log(), 10, what="i-a leads")
    second = managers("i-b", services=[service], managerSleepTimeSeconds=0.2, alerts=alerts)
    eventually(lambda: len(received) == 1, 15, what="the trigger from i-a")
    assert received[0]["payload"]["source"] == "i-a" and received[0]["event_action"] == "trigger"
    if how == "kill -9":
        first.process.kill()
        first.process.wait()
        first.process = None
        first.log_file.close()
    central.set("demand:web", "2")
    if how == "stop":
        assert first.stop() == 0
    eventually(lambda: "leadership gained" in second.log(), 15, what="i-b leads")
    eventually(lambda: len(received) == 2, 10, what="the resolve")
    assert received[1]["event_action"] == "resolve"
    assert received[1]["dedup_key"] == "warden:metric-failed:web"
    time.sleep(1.5)
    assert len(received) == 2, "resolved once, nothing more"
    assert central.hlen("warden:alerts:firing") == 0


def test_a_service_removed_while_its_condition_fires_resolves_it(central, managers, webhook):
    m = _failing_metric(central, managers, {"webhookUrl": webhook.url, "events": ["errors"],
                                            "template": PAGERDUTY})
    eventually(lambda: len(webhook.bodies) == 1, 15, what="the trigger")
    m.write_services("services.json", [])
    eventually(lambda: len(webhook.bodies) == 2, 10, what="the resolve")
    assert webhook.bodies[1]["event_action"] == "resolve"
    assert webhook.bodies[1]["payload"]["summary"].startswith("[warden i-alert] web: service removed")
    assert central.hlen("warden:alerts:firing") == 0


def test_an_alert_never_follows_a_redirect_with_its_headers(central, managers, webhook):
    """The sender followed redirects and forwarded the operator's headers (an
    ``Authorization`` among them) to whatever host a 3xx named. A 3xx is now a failed
    delivery, logged with its ``Location``, and nothing reaches the other host."""
    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(307)
            self.send_header("Location", webhook.url)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    with serve_http(Redirect) as url:
        m = managers("i-alert", alerts={"webhookUrl": f"{url}/hook", "events": ["leadership"],
                                        "headers": {"Authorization": "Bearer s3cret"}})
        eventually(lambda: "alert dropped after 4 attempts (HTTP 307 redirect to " in m.log(), 15,
                   what="the redirect refused")
    assert webhook.bodies == [] and webhook.headers == [], "the alert and its headers reached the other host"
    assert webhook.url in m.log()
