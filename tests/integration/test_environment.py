"""Configuration the way ECS delivers it: every config key from the environment
(``WARDEN_<KEY_IN_UPPER_SNAKE>``, lists and objects as JSON) over the file, a config
file that may be left out, and ``warden config`` showing what is in force and from
where, secrets redacted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import eventually


def warden(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
    return subprocess.run([sys.executable, "-m", "warden", *args], cwd=folder, capture_output=True, text=True,
                          timeout=60, env=dict(clean, **env))


def services(folder: Path) -> None:
    (folder / "services.json").write_text(json.dumps([{"name": "web", "containerName": "web", "port": 8080}]))


def test_every_key_comes_from_the_environment_over_the_file(tmp_path: Path) -> None:
    services(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"serviceDescriptionFilename": "services.json",
                                                      "leaseSeconds": 5, "handlers": ["redx", "elb", "ecs"],
                                                      "serviceManagementRedisAddress": "10.0.0.9:6379"}))
    env = {"WARDEN_LEASE_SECONDS": "3", "WARDEN_HANDLERS": '["redx"]',
           "WARDEN_METRICS_ADDRESS": "[::1]:9723", "WARDEN_SERVICE_MANAGEMENT_REDIS_PASSWORD": "hunter2-hunter2",
           "WARDEN_ALERTS": '{"webhookUrl": "https://hooks.example.com/T0K3N", "events": ["errors"]}'}
    shown = warden(tmp_path, "config", **env)
    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[0]: line for line in shown.stdout.splitlines() if line.strip()}
    assert lines["leaseSeconds"].split()[1:] == ["3", "environment", "WARDEN_LEASE_SECONDS"]
    assert lines["handlers"].split()[1:] == ['["redx"]', "environment", "WARDEN_HANDLERS"]
    assert lines["metricsAddress"].split()[1:] == ['"[::1]:9723"', "environment", "WARDEN_METRICS_ADDRESS"]
    assert lines["serviceManagementRedisAddress"].split()[1:] == ['"<redacted>"', "file", "config.json"]
    assert lines["guardTimeSeconds"].split()[1:] == ["1.0", "default"]
    assert "hunter2" not in shown.stdout and "T0K3N" not in shown.stdout, shown.stdout
    assert warden(tmp_path, "validate", **env).returncode == 0

    refused = warden(tmp_path, "validate", WARDEN_LEASE_SECONDS="soon", WARDEN_HANDLERS="redx")
    assert refused.returncode == 2
    assert "WARDEN_LEASE_SECONDS: must be a number of seconds" in refused.stdout, refused.stdout
    assert "WARDEN_HANDLERS: must be a list of handler names" in refused.stdout, refused.stdout


def test_without_a_config_file_the_environment_is_the_configuration(tmp_path: Path, central_server) -> None:
    """On ECS a config file means user data copying files around; the task definition's
    environment is enough."""
    services(tmp_path)
    env = {"WARDEN_SERVICE_DESCRIPTION_FILENAME": str(tmp_path / "services.json"),
           "WARDEN_SERVICE_MANAGEMENT_REDIS_ADDRESS": f"127.0.0.1:{central_server.port}",
           "WARDEN_HANDLERS": "[]", "WARDEN_ZONE_CHECK": "none", "WARDEN_INSTANCE_ID": "i-env",
           "WARDEN_REGION": "us-east-1", "WARDEN_LEASE_SECONDS": "2", "WARDEN_GUARD_TIME_SECONDS": "0.5",
           "WARDEN_HEARTBEAT_INTERVAL_SECONDS": "0.5"}
    assert warden(tmp_path, "validate", **env).returncode == 0
    shown = warden(tmp_path, "config", **env).stdout
    assert "no config file" in shown and "WARDEN_SERVICE_MANAGEMENT_REDIS_ADDRESS" in shown, shown
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
    log = tmp_path / "warden.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "warden", "manager"], cwd=tmp_path,
                                   env=dict(clean, **env), stdout=out, stderr=subprocess.STDOUT)
    try:
        import redis

        central = redis.Redis(port=central_server.port, db=11, decode_responses=True)
        eventually(lambda: central.hget("service-manager", "id") == "i-env" or process.poll() is not None, 15,
                   what="the manager configured by its environment leads")
        assert process.poll() is None, log.read_text()
        process.send_signal(signal.SIGHUP)
        eventually(lambda: "SIGHUP: " in log.read_text() and "unchanged" in log.read_text(), 10,
                   what="a reload of the environment-only configuration")
        assert "the configuration in force stays" not in log.read_text(), log.read_text()
    finally:
        process.terminate()
        assert process.wait(30) == 0, log.read_text()

    none = warden(tmp_path, "validate")
    assert none.returncode == 2 and "config file not found" in none.stdout, "nothing set: still an error"
