"""Secrets kept out of the config file, and Redis users that may run only what Warden
runs: the ``ACL SETUSER`` lines of ``docs/redis-acl.md`` applied to real Redis servers
(the central one by address and under Sentinel, and the Redx one), with Warden logging
in through secrets read from files and the environment."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest
import redis as redis_lib

from conftest import ROOT, RUN, RedisServer, eventually, free_port, ip_of

ADMIN = "admin-password-of-the-test"


def acl_words(section: str, password: str, drop: tuple[str, ...] = ()) -> list[str]:
    """The ``ACL SETUSER`` line of ``docs/redis-acl.md``'s section, with ``password``,
    less the parts in ``drop``."""
    text = (ROOT / "docs" / "redis-acl.md").read_text()
    part = text.split(f"## {section}\n", 1)[1]
    line = next(line for line in part.splitlines() if line.startswith("ACL SETUSER "))
    words = [w.replace(">CHANGE-ME", f">{password}") for w in line.split()]
    for word in drop:
        words.remove(word)
    return words


def server_with_user(name: str, section: str, password: str, *options: str,
                     drop: tuple[str, ...] = ()) -> RedisServer:
    """A redis-server whose default user needs ``ADMIN``, with Warden's user as the doc
    gives it."""
    server = RedisServer(name, "--requirepass", ADMIN, *options)
    server.start()
    set_user(server, section, password, drop)
    return server


def set_user(server: RedisServer, section: str, password: str, drop: tuple[str, ...] = ()) -> None:
    admin = redis_lib.Redis(port=server.port, password=ADMIN, **server.connect_options())
    admin.execute_command(*acl_words(section, password, drop))
    admin.close()


def denied(log: str) -> list[str]:
    """The log lines where a Redis refused a login or a command."""
    marks = ("NOPERM", "no permissions", "WRONGPASS", "NOAUTH", "refused the login", "refused a command",
             "may not run")
    return [line for line in log.splitlines() if any(mark in line for mark in marks)]


def admin_client(server: RedisServer, db: int = 0) -> Any:
    return redis_lib.Redis(port=server.port, password=ADMIN, db=db, decode_responses=True,
                           **server.connect_options())


@pytest.mark.parametrize("how", ["file", "env"])
def test_secrets_from_files_or_the_environment_log_in_and_nothing_shows_them(
        how, containers, warden, webhook, tmp_path):
    """Redis passwords, the webhook URL, its headers and a template carrying a key lived
    only in ``config.json``, and ``repr(config)`` carried them. Each may be read from a
    file or the environment; Warden logs in with them (ACL users that may run only what
    the docs list) and alerts with them, and none shows in ``status --json``,
    ``/metrics``, the DEBUG log or ``repr(config)``."""
    secrets = {
        "redx": f"redx-password-{RUN}-xyzzy",
        "central": f"central-password-{RUN}-plugh",
        "control": f"control-secret-{RUN}-0123456789",
        "hook": f"hook-path-token-{RUN}",
        "auth": f"Bearer header-token-{RUN}",
        "key": f"pagerduty-key-{RUN}",
    }
    redx = server_with_user("redx-acl", "Redx Redis", secrets["redx"])
    central = server_with_user("central-acl", "Central Redis", secrets["central"])
    try:
        values = {
            "redx_url": f"redis://warden:{secrets['redx']}@127.0.0.1:{redx.port}",
            "central_address": f"127.0.0.1:{central.port}",
            "central_user": "warden",
            "central_password": secrets["central"],
            "control": secrets["control"],
            "hook_url": f"{webhook.url}/{secrets['hook']}",
            "auth": secrets["auth"],
            "template": json.dumps({"routing_key": secrets["key"], "summary": "$text"}),
        }
        env = {}

        def ref(name: str) -> dict:
            if how == "file":
                path = tmp_path / "secrets" / name
                path.parent.mkdir(exist_ok=True)
                path.write_text(values[name] + "\n")
                return {"file": str(path)}
            env[f"TEST_SECRET_{name.upper()}"] = values[name]
            return {"env": f"TEST_SECRET_{name.upper()}"}

        metrics = f"127.0.0.1:{free_port()}"
        web = {"name": "web", "containerName": f"wt-{RUN}-web", "port": 8080, "loadBalancerUrl": "web.example.com"}
        w = warden([web], nginxRedisAddress=ref("redx_url"), serviceManagementRedisAddress=ref("central_address"),
                   serviceManagementRedisUsername=ref("central_user"),
                   serviceManagementRedisPassword=ref("central_password"), controlSecret=[ref("control")],
                   alerts={"webhookUrl": ref("hook_url"), "headers": {"Authorization": ref("auth")},
                           "template": ref("template"), "events": ["leadership", "routes"]},
                   handlers=["redx", "alerts"], zoneCheck="none", metricsAddress=metrics,
                   heartbeatIntervalSeconds=0.5, leaseSeconds=2, guardTimeSeconds=0.5)
        w.env.update(env, WARDEN_INSTANCE_ID="i-secret", WARDEN_AVAILABILITY_ZONE="us-east-1a")
        w.start("run", ready="leadership gained")
        c = containers.run("web")
        routes = admin_client(redx)
        eventually(lambda: routes.hgetall("backend:web") == {f"{ip_of(c)}:8080": "0"}, 10,
                   what="routed through the Redx user")
        assert admin_client(central, 11).hget("service-manager", "id") == "i-secret"
        eventually(lambda: webhook.bodies, 10, what="an alert")
        assert webhook.paths[0] == f"/hook/{secrets['hook']}"
        assert webhook.headers[0]["Authorization"] == secrets["auth"]
        assert webhook.bodies[0]["routing_key"] == secrets["key"]

        time.sleep(2)  # heartbeats, sweeps and scrapes under the users' permissions
        assert denied(w.log()) == [], "the documented users lack a permission Warden uses"
        status = w.command("status", "--json", check=True).stdout
        assert json.loads(status)["leader"]["id"] == "i-secret"
        with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as reply:
            scraped = reply.read().decode()
        shown = subprocess.run(
            [sys.executable, "-c", "import sys; from warden.config import load_config; "
                                   "print(repr(load_config(sys.argv[1])[0]))", str(w.config_path)],
            env=w.env, capture_output=True, text=True, check=True).stdout
        # The instance id is no secret: WARDEN_INSTANCE_ID is in the config in force.
        assert "<redacted>" in shown and "instance_id='i-secret'" in shown
        for name, text in (("status --json", status), ("/metrics", scraped), ("the log", w.log()),
                           ("repr(config)", shown)):
            for secret_name, secret in secrets.items():
                assert secret not in text, f"the {secret_name} secret shows in {name}"
    finally:
        redx.stop()
        central.stop()


def test_an_unreadable_secret_is_a_config_error_naming_the_key(tmp_path):
    (tmp_path / "services.json").write_text("[]")
    (tmp_path / "config.json").write_text(json.dumps({
        "serviceManagementRedisAddress": "10.0.0.9:6379",
        "serviceManagementRedisPassword": {"file": "missing-secret"},
        "alerts": {"webhookUrl": {"env": "TEST_UNSET_VARIABLE"}, "headers": {"X-Key": {"vault": "x"}}},
    }))
    result = subprocess.run([sys.executable, "-m", "warden", "--config", str(tmp_path / "config.json"), "validate"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        f"{tmp_path}/config.json: serviceManagementRedisPassword: cannot read secret file "
        f"{tmp_path}/missing-secret: No such file or directory",
        f"{tmp_path}/config.json: alerts.webhookUrl: environment variable TEST_UNSET_VARIABLE is not set",
        f"{tmp_path}/config.json: alerts.headers.x-key: must be the value, "
        '{"file": "/run/secrets/NAME"} or {"env": "NAME"}',
    ], result.stdout


def test_a_user_missing_a_permission_a_leader_needs_spends_no_epoch(managers):
    """A restricted ACL user made the manager loop claim -> "central Redis unreachable:
    no permissions to run 'info'" -> give up, burning an epoch about every 6 s. A user
    missing one permission a leader needs gets one clear error naming the command and
    the docs, never enters the election, and spends no epoch; a user with every
    permission leads."""
    central = server_with_user("central-acl", "Central Redis", "central-password-0123", drop=("+info",))
    try:
        settings = dict(serviceManagementRedisAddress=f"127.0.0.1:{central.port}",
                        serviceManagementRedisUsername="warden",
                        serviceManagementRedisPassword="central-password-0123")
        m = managers("i-short", **settings)
        eventually(lambda: "not standing for election: the central Redis user may not run INFO replication"
                   in m.log(), 10, what="the missing permission named")
        time.sleep(6)  # more than one retry
        admin = admin_client(central, 11)
        assert admin.get("warden:epoch") is None, "an epoch was spent"
        assert admin.zcard("leadership-challenge") == 0
        assert m.log().count("may not run INFO replication") == 1
        assert "docs/redis-acl.md lists what Warden's user needs" in m.log()
        assert "leadership gained" not in m.log() and "unreachable" not in m.log()
        # The operator adds it: the same manager leads, with no restart.
        set_user(central, "Central Redis", "central-password-0123")
        eventually(lambda: "leadership gained: epoch" in m.log(), 15, what="leading once permitted")
        wrong = managers("i-wrong", **dict(settings, serviceManagementRedisPassword="not-the-password"),
                         start=False).command("manager")
        assert wrong.returncode == 1
        assert f"warden: the central Redis at 127.0.0.1:{central.port}/11 refused the login (" in wrong.stderr
        assert "check serviceManagementRedisUsername and serviceManagementRedisPassword, and " \
               "docs/redis-acl.md" in wrong.stderr
    finally:
        central.stop()


def test_sentinel_with_tls_passwords_and_the_documented_user_elects_scales_and_fails_over(
        managers, aws, ecs, tmp_path):
    """Sentinel mode had no authentication or TLS (credentials in a URL were dropped
    silently). With TLS on every connection, a password on the primary and its replica,
    Sentinels with their own password (given in each ``rediss://`` Sentinel URL, with
    the CA) and the ACL user of the docs on both servers
    (``serviceManagementRedisUsername``/``Password``), managers elect, scale ECS (moto)
    and fail over, with no permission ever refused."""
    from conftest import SentinelCentral, TlsFiles
    from test_sentinel import holders, worker_service

    tls = TlsFiles(tmp_path / "tls")
    group_central = SentinelCentral(password=ADMIN, sentinel_password="sentinel-password-0123", tls=tls)
    group: list = []
    try:
        group_central.start()
        for server in group_central.servers:
            set_user(server, "Central Redis", "warden-password-0123")
        central = group_central.client()
        central.set("demand:worker", "2")
        settings = {"serviceManagementRedisSentinels": [
                        f"rediss://:sentinel-password-0123@127.0.0.1:{p}?ssl_ca_certs={tls.ca}"
                        for p in group_central.sentinel_ports],
                    "serviceManagementRedisSentinelMaster": group_central.master,
                    "serviceManagementRedisUsername": "warden",
                    "serviceManagementRedisPassword": "warden-password-0123",
                    "handlers": ["ecs"], "managerSleepTimeSeconds": 1}
        group = [managers(f"i-{n}", services=[worker_service(ecs)], **settings) for n in range(2)]
        running = lambda: sum(1 for t in ecs.tasks() if t["startedBy"] == "warden")  # noqa: E731
        eventually(lambda: len(holders(group)) == 1 and running() == 2, 30, what="a leader that scaled")

        old = group_central.kill_primary()
        eventually(lambda: group_central.primary() is not old, 30, what="the failover")
        # The old primary comes back as a replica; ACLs are not replicated nor kept.
        group_central.restart_as_replica(old)
        set_user(old, "Central Redis", "warden-password-0123")
        group_central.wait_replicated()
        eventually(lambda: central.set("demand:worker", "4"), 10, what="the new primary")
        eventually(lambda: len(holders(group)) == 1 and running() == 4, 30, what="scaling after the failover")
        for m in group:
            assert denied(m.log()) == []
    finally:
        # The managers stop first: against a central Redis already gone each would
        # spend its stop deadline on the hand-back.
        for m in group:
            m.ask_to_stop()
        for m in group:
            m.stop()
        group_central.stop()
