"""Config and service files: the Go and Perl formats load unchanged, and ``warden
validate`` names every problem as ``FILE: FIELD: problem``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from warden.config import load_config
from warden.services import ServiceCatalog

GO_CONFIG = {
    "nginxRedisAddress": "127.0.0.1:6380",
    "nginxRedisDatabaseNumber": 0,
    "serviceDescriptionFilename": "services",
    "registrarSleepTimeSeconds": 10,
}
GO_SERVICE = {"name": "image-server", "backendName": "image-server",
              "containerName": "acme/image-server", "loadBalancerName": "image-elb",
              "loadBalancerUrl": "img.example.com", "port": 8080, "site": "",
              "taskName": "image-server-task", "taskVersion": 3}
PERL_SERVICE = {"Name": "thumbs", "BackendName": "thumbs", "ContainerName": "acme/thumbs",
                "LoadBalancerName": "", "LoadBalancerUrl": "thumbs.example.com",
                "Port": "80", "Site": "/t/", "TaskName": "thumbs", "TaskVersion": "1"}


def run_warden(folder: Path, *args: str, config: str = "config.json") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "warden", "--config", config, *args],
                          cwd=folder, capture_output=True, text=True, timeout=60)


def write(folder: Path, name: str, content: object) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_go_config_with_go_and_perl_service_files_loads_unchanged(tmp_path: Path) -> None:
    write(tmp_path, "config.json", GO_CONFIG)
    write(tmp_path, "services/go.json", [GO_SERVICE])
    write(tmp_path, "services/perl.json", PERL_SERVICE)
    config, problems = load_config(str(tmp_path / "config.json"))
    assert problems == [] and config is not None
    assert config.nginx_redis.display == "127.0.0.1:6380/0"
    assert config.registrar_sleep_time_seconds == 10
    services, problems = ServiceCatalog(config.service_description_path, "services").load()
    assert problems == []
    by_name = {s.name: s for s in services}
    assert by_name["image-server"].task_version == "3"
    assert by_name["image-server"].frontend == "img.example.com"
    assert by_name["thumbs"].port == 80 and by_name["thumbs"].task_version == "1"
    assert by_name["thumbs"].frontend == "thumbs.example.com/t/"
    assert by_name["thumbs"].backend_name == "thumbs"
    result = run_warden(tmp_path, "validate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_validate_names_file_and_field_for_each_problem(tmp_path: Path) -> None:
    write(tmp_path, "conf/config.json", {"serviceDescriptionFilename": "services",
                                          "registrarSleepTimeSeconds": "often",
                                          "colour": "blue"})
    write(tmp_path, "conf/services/a.json", [
        {"name": "a", "port": 80},
        {"Name": "b", "port": "eighty", "publishedPort": "yes"},
        {"port": 81, "NAME": "c", "name": "c2"},
    ])
    write(tmp_path, "conf/services/broken.json", '{"name": "x", ')
    write(tmp_path, "conf/services/d.json", {"name": "d"})
    result = run_warden(tmp_path, "validate", config="conf/config.json")
    assert result.returncode == 2
    lines = result.stdout.splitlines()
    assert "conf/config.json: registrarSleepTimeSeconds: must be a positive number of seconds" in lines
    assert "conf/config.json: colour: unknown key, ignored (warning)" in lines
    # The config is broken, so the service files are not read until it is fixed.
    write(tmp_path, "conf/config.json", {"serviceDescriptionFilename": "services"})
    result = run_warden(tmp_path, "validate", config="conf/config.json")
    assert result.returncode == 2
    lines = result.stdout.splitlines()
    assert "conf/services/a.json: [1].port: must be a port number (a number or a string of digits)" in lines
    assert "conf/services/a.json: [1].publishedPort: must be true or false" in lines
    assert any(line.startswith("conf/services/a.json: [2].name: duplicate key") for line in lines)
    assert any(line.startswith("conf/services/broken.json: -: invalid JSON") for line in lines)
    assert "conf/services/d.json: port: is required" in lines


def test_frontend_claimed_for_two_backends_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "config.json", {"serviceDescriptionFilename": "services.json"})
    write(tmp_path, "services.json", [
        {"name": "a", "port": 80, "loadBalancerUrl": "x.example.com"},
        {"name": "b", "port": 80, "loadBalancerUrl": "x.example.com"},
        {"name": "c", "port": 80, "loadBalancerUrl": "x.example.com", "backendName": "a"},
    ])
    result = run_warden(tmp_path, "validate")
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "services.json: [1].loadBalancerUrl: frontend 'x.example.com' is already claimed by "
        "service 'a' (services.json) for backend 'a'"]


def test_missing_config_is_exit_2_naming_it(tmp_path: Path) -> None:
    result = run_warden(tmp_path, "validate")
    assert result.returncode == 2
    assert "config.json: -: config file not found" in result.stdout
    result = run_warden(tmp_path, "sweep")
    assert result.returncode == 2
    assert "config.json: -: config file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_error_is_exit_2(tmp_path: Path) -> None:
    assert run_warden(tmp_path, "frobnicate").returncode == 2
    assert run_warden(tmp_path, "--help").returncode == 0


@pytest.mark.parametrize("address, db_key, expected", [
    ("10.0.0.1:6380", None, "10.0.0.1:6380/11"),
    ("redis://:secret@10.0.0.1:6390/4", None, "10.0.0.1:6390/4"),
    ("redis://10.0.0.1:6390/4", 7, "10.0.0.1:6390/7"),
    ("rediss://user:pw@cache.example.com", None, "cache.example.com:6379/11"),
])
def test_redis_url_db_is_used_unless_the_number_is_given(tmp_path: Path, address: str,
                                                         db_key: object, expected: str) -> None:
    settings: dict = {"ServiceManagementRedisAddress": address}
    if db_key is not None:
        settings["serviceManagementRedisDatabaseNumber"] = db_key
    write(tmp_path, "config.json", settings)
    config, problems = load_config(str(tmp_path / "config.json"))
    assert problems == [] and config is not None
    assert config.service_management_redis.display == expected


def test_lease_must_be_twice_the_heartbeat(tmp_path: Path) -> None:
    write(tmp_path, "config.json", {"heartbeatIntervalSeconds": 2, "leaseSeconds": 3})
    config, problems = load_config(str(tmp_path / "config.json"))
    assert config is None
    assert [str(p) for p in problems] == [
        f"{tmp_path}/config.json: leaseSeconds: must be at least twice heartbeatIntervalSeconds"]


def test_broken_file_keeps_its_last_good_version(tmp_path: Path) -> None:
    write(tmp_path, "s/a.json", {"name": "a", "port": 80})
    write(tmp_path, "s/b.json", {"name": "b", "port": 81})
    catalog = ServiceCatalog(str(tmp_path / "s"), "s")
    services, problems = catalog.load()
    assert [s.name for s in services] == ["a", "b"] and problems == []
    write(tmp_path, "s/a.json", {"name": "a", "port": 90})
    write(tmp_path, "s/b.json", "{not json")
    services, problems = catalog.load()
    assert [(s.name, s.port) for s in services] == [("a", 90), ("b", 81)]
    assert [p.file for p in problems] == ["s/b.json"]
    (tmp_path / "s/b.json").unlink()
    services, _ = catalog.load()
    assert [s.name for s in services] == ["a"]


def test_metric_and_scaling_are_checked(tmp_path: Path) -> None:
    write(tmp_path, "config.json", {"serviceDescriptionFilename": "services.json"})
    write(tmp_path, "services.json", [
        {"name": "a", "port": 80, "metric": {"type": "redis"}},
        {"name": "b", "port": 80, "metric": {"Type": "tea-leaves"}},
        {"name": "c", "port": 80, "metric": {"type": "static", "value": 3},
         "scaling": {"steps": [[0, 1], [5, "two"]], "minTasks": -1}},
        {"name": "d", "port": 80, "metric": {"type": "sqs", "queueUrl": "http://q"},
         "scaling": {"steps": [[0, 1], [5, 2]], "maxTasks": 4, "maxStep": 2}},
    ])
    result = run_warden(tmp_path, "validate")
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "services.json: [0].metric.key: is required for a redis metric",
        "services.json: [1].metric.Type: unknown metric type 'tea-leaves' (known: "
        "cloudwatch, elasticbeanstalk, redis, sqs, static)",
        "services.json: [2].scaling.steps: must be a list of [threshold, tasks] pairs",
        "services.json: [2].scaling.minTasks: must be a whole number, 0 or more",
    ]


def test_control_secret_may_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "config.json", {"controlSecret": "from-file"})
    config, _ = load_config(str(tmp_path / "config.json"))
    assert config is not None and config.control_secret == "from-file"
    monkeypatch.setenv("WARDEN_CONTROL_SECRET", "from-env")
    config, _ = load_config(str(tmp_path / "config.json"))
    assert config is not None and config.control_secret == "from-env"
