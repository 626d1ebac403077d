"""Config and service files: the Go and Perl formats load unchanged, and ``warden
validate`` names every problem as ``FILE: FIELD: problem``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
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


def write(folder: Path, name: str, content: object, central: bool = True) -> Path:
    """Write a file of the test's config folder. A ``config.json`` given as an object
    names a central Redis, as a cluster host's config does (a config that leaves it at
    the loopback default is warned about), unless it names one itself or ``central`` is
    False."""
    if (name == "config.json" and central and isinstance(content, dict)
            and not {k.lower() for k in content} & {"servicemanagementredisaddress",
                                                     "servicemanagementredissentinels"}):
        content = {**content, "serviceManagementRedisAddress": "10.0.0.9:6379"}
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
    assert "conf/config.json: registrarSleepTimeSeconds: must be a number of seconds from 0.1 to 86400, not 'often'" in lines
    assert "conf/config.json: colour: unknown key, ignored (warning)" in lines
    # The config is broken, so the service files are not read until it is fixed.
    write(tmp_path, "conf/config.json", {"serviceDescriptionFilename": "services"})
    result = run_warden(tmp_path, "validate", config="conf/config.json")
    assert result.returncode == 2
    lines = result.stdout.splitlines()
    assert "conf/services/a.json: [1].port: must be a port number (a number or a string of digits) (service 'b')" in lines
    assert "conf/services/a.json: [1].publishedPort: must be true or false (service 'b')" in lines
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
        "service 'a' (services.json) for backend 'a' (service 'b')"]


def test_missing_config_is_exit_2_naming_it(tmp_path: Path) -> None:
    """``config.json: -: config file not found`` named neither the folder looked in nor
    how to point elsewhere."""
    hint = (f"config.json: -: config file not found: looked for {tmp_path}/config.json "
            "(give another with --config PATH or WARDEN_CONFIG, or set WARDEN_<KEY> variables)")
    result = run_warden(tmp_path, "validate")
    assert result.returncode == 2
    assert hint in result.stdout, result.stdout
    result = run_warden(tmp_path, "sweep")
    assert result.returncode == 2
    assert hint in result.stderr, result.stderr
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


def test_sentinel_keys_are_checked_and_name_the_primary(tmp_path: Path) -> None:
    write(tmp_path, "services.json", [{"name": "web", "port": 80}])
    write(tmp_path, "config.json", {"serviceManagementRedisSentinels": ["10.0.1.5:26379", "[fd00::5]:26380"],
                                    "serviceManagementRedisSentinelMaster": "central"})
    config, problems = load_config(str(tmp_path / "config.json"))
    assert problems == [] and config is not None
    assert config.service_management_redis.sentinels == (("10.0.1.5", 26379), ("fd00::5", 26380))
    assert config.service_management_redis.display == \
        "primary 'central' of Sentinels 10.0.1.5:26379,fd00::5:26380/11"
    write(tmp_path, "config.json", {"ServiceManagementRedisSentinels": ["10.0.1.5"]})
    result = run_warden(tmp_path, "validate")
    assert result.returncode == 2
    assert "config.json: ServiceManagementRedisSentinels: '10.0.1.5' is not host:port" in result.stdout + result.stderr
    assert "config.json: ServiceManagementRedisSentinels: needs serviceManagementRedisSentinelMaster as well" \
        in result.stdout + result.stderr
    for entries, problem in (
            (["rediss://:pw-secret@10.0.1.5:26379?ssl_ca=/x"], "'rediss://:***@10.0.1.5:26379?ssl_ca=/x': "
                                                                "unknown option 'ssl_ca'"),
            (["redis://:pw-secret@10.0.1.5:26379?ssl_ca_certs=/x"], "'redis://:***@10.0.1.5:26379?ssl_ca_certs=/x': "
                                                                    "options are for rediss:// (TLS) only"),
            (["redis://:pw-secret@10.0.1.5:26379", "10.0.1.6:26379"], "every Sentinel entry must carry the same "
                                                                       "user, password, scheme and options")):
        write(tmp_path, "config.json", {"serviceManagementRedisSentinels": entries,
                                        "serviceManagementRedisSentinelMaster": "central"})
        result = run_warden(tmp_path, "validate")
        assert result.returncode == 2 and f"serviceManagementRedisSentinels: {problem}" in result.stdout
        assert "pw-secret" not in result.stdout + result.stderr
    write(tmp_path, "config.json", {"serviceManagementRedisSentinels": ["redis://u:pw@10.0.1.5:26379"],
                                    "serviceManagementRedisSentinelMaster": "central",
                                    "serviceManagementRedisAddress": "redis://u:pw@10.0.1.9:6379",
                                    "serviceManagementRedisPassword": "pw2"})
    config, problems = load_config(str(tmp_path / "config.json"))
    assert config is not None and config.service_management_redis.sentinel_auth == ("u", "pw")
    assert config.service_management_redis.password == "pw2"
    write(tmp_path, "config.json", {"serviceManagementRedisAddress": "redis://u:pw@10.0.1.9:6379",
                                    "serviceManagementRedisPassword": "pw2"})
    assert "carries a user or password, and serviceManagementRedisUsername or serviceManagementRedisPassword " \
           "is given too" in run_warden(tmp_path, "validate").stdout


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
    assert [s.name for s in services] == ["a", "b"], "a file just gone is kept for a grace time"
    catalog.gone_grace_seconds = 0.2
    time.sleep(0.3)
    services, _ = catalog.load()
    assert [s.name for s in services] == ["a"]


def test_metric_and_scaling_are_checked(tmp_path: Path) -> None:
    write(tmp_path, "config.json", {"serviceDescriptionFilename": "services.json"})
    write(tmp_path, "services.json", [
        {"name": "a", "port": 80, "taskName": "t", "metric": {"type": "redis"}, "scaling": {"maxTasks": 3}},
        {"name": "b", "port": 80, "taskName": "t", "metric": {"Type": "tea-leaves"}, "scaling": {"maxTasks": 3}},
        {"name": "c", "port": 80, "taskName": "t", "metric": {"type": "static", "value": 3},
         "scaling": {"steps": [[0, 1], [5, "two"]], "minTasks": -1}},
        {"name": "d", "port": 80, "taskName": "t", "metric": {"type": "sqs", "queueUrl": "http://q"},
         "scaling": {"steps": [[0, 1], [5, 2]], "maxTasks": 4, "maxStep": 2}},
    ])
    result = run_warden(tmp_path, "validate")
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "services.json: [0].metric.key: is required for a redis metric (service 'a')",
        "services.json: [1].metric.Type: unknown metric type 'tea-leaves' (known: "
        "cloudwatch, elasticbeanstalk, redis, sqs, static) (service 'b')",
        "services.json: [2].scaling.steps: must be a list of [threshold, tasks] pairs "
        "(a finite threshold, tasks from 0 to 10000) (service 'c')",
        "services.json: [2].scaling.minTasks: must be a whole number from 0 to 10000 (service 'c')",
    ]


def test_control_secret_may_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "config.json", {"controlSecret": "from-file-0123456789"})
    config, _ = load_config(str(tmp_path / "config.json"))
    assert config is not None and config.control_secrets == ("from-file-0123456789",)
    monkeypatch.setenv("WARDEN_CONTROL_SECRET", "from-env-0123456789")
    config, _ = load_config(str(tmp_path / "config.json"))
    assert config is not None and config.control_secrets == ("from-env-0123456789",)
    monkeypatch.setenv("WARDEN_CONTROL_SECRET", '["new-one-0123456789", "old-one-0123456789"]')
    config, _ = load_config(str(tmp_path / "config.json"))
    assert config is not None and config.control_secrets == ("new-one-0123456789", "old-one-0123456789")


def test_a_control_secret_is_one_or_a_list_each_of_16_bytes_at_least(tmp_path: Path) -> None:
    """``controlSecret: "x"`` was accepted: a key that short is guessed."""
    write(tmp_path, "services.json", [])
    for value in ("x", ["long-enough-0123456789", "short"], [], 7):
        write(tmp_path, "config.json", {"controlSecret": value})
        result = run_warden(tmp_path, "validate")
        assert result.returncode == 2, value
        assert result.stdout.startswith("config.json: controlSecret: "), result.stdout
    write(tmp_path, "config.json", {"controlSecret": ["new-secret-0123456789", "old-secret-0123456789"]})
    assert run_warden(tmp_path, "validate").returncode == 0


def test_label_patterns_are_lists_of_patterns(tmp_path: Path) -> None:
    write(tmp_path, "services.json", [])
    for key in ("labelFrontends", "labelLoadBalancers"):
        for value in ("*.example.com", ["ok.example.com", ""], ["a b"], [3]):
            write(tmp_path, "config.json", {key: value})
            result = run_warden(tmp_path, "validate")
            assert result.returncode == 2, (key, value)
            assert result.stdout == f"config.json: {key}: must be a list of shell-style patterns such as " \
                                    '"*.apps.example.com" (no spaces)\n', result.stdout
        write(tmp_path, "config.json", {key: ["*.apps.example.com", "shop.example.com/api/*"]})
        assert run_warden(tmp_path, "validate").returncode == 0


# -- production conditions: service files as people really edit them -------------------


def test_a_unicode_digit_is_a_problem_line_not_a_crash(tmp_path: Path) -> None:
    """Defect 6: "²".isdigit() is true and int("²") raises; the other files still load."""
    write(tmp_path, "config.json", {"serviceDescriptionFilename": "services"})
    write(tmp_path, "services/a.json", {"name": "a", "port": "8²"})
    write(tmp_path, "services/b.json", {"name": "b", "port": "81", "targetPort": "٣"})
    write(tmp_path, "services/c.json", {"name": "c", "port": 82})
    result = run_warden(tmp_path, "validate")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.splitlines() == [
        "services/a.json: port: must be a port number (a number or a string of digits)",
        "services/b.json: targetPort: must be a port number (a number or a string of digits)",
    ]
    services, _ = ServiceCatalog(str(tmp_path / "services"), "services").load()
    assert [s.name for s in services] == ["c"]


GARBAGE = ["²", "", " ", "1e400", 1e300, -1, 0, 70000, True, None, [], {}, [1, 2], {"a": 1},
           "x" * 5000, "\u0000", 3.5, "NaN"]


def test_no_field_value_crashes_the_loader(tmp_path: Path) -> None:
    """Defect 6: every field check gives a problem line; none raises."""
    from warden.services import _FIELDS, parse_file

    fields = [k for k in _FIELDS] + ["metric.type", "metric.value", "metric.key", "scaling.steps",
                                     "scaling.minTasks", "scaling.maxTasks", "scaling.maxStep",
                                     "scaling.scaleDownDelaySeconds", "scaling.stepsUrl", "runTask"]
    for field in fields:
        for value in GARBAGE:
            service: dict = {"name": "a", "port": 80, "taskName": "t", "metric": {"type": "static", "value": 1},
                             "scaling": {"steps": [[0, 1]]}}
            head, _, tail = field.partition(".")
            if tail:
                service[head] = dict(service[head], **{tail: value})
            else:
                service[head] = value
            path = write(tmp_path, "s.json", service)
            services, problems = parse_file(str(path), "s.json")
            assert services is not None or problems, (field, value)
            assert all(str(p).startswith("s.json: ") for p in problems), (field, value, problems)


def test_a_conflicting_new_file_is_the_one_rejected(tmp_path: Path) -> None:
    """Defect 5: a new file (sorting first) claiming a frontend in force is rejected and
    named; the good file keeps its services."""
    write(tmp_path, "s/b.json", {"name": "b", "port": 80, "loadBalancerUrl": "x.example.com"})
    catalog = ServiceCatalog(str(tmp_path / "s"), "s")
    catalog.load()
    write(tmp_path, "s/a.json", {"name": "a", "port": 80, "loadBalancerUrl": "x.example.com"})
    services, problems = catalog.load()
    assert [(s.name, s.frontend, s.backend_name) for s in services] == [("b", "x.example.com", "b")]
    assert [str(p) for p in problems] == [
        "s/a.json: loadBalancerUrl: frontend 'x.example.com' is already claimed by service 'b' "
        "(s/b.json) for backend 'b'"]
    # A good file that changes into a conflict keeps its last good version.
    write(tmp_path, "s/a.json", {"name": "a", "port": 80, "loadBalancerUrl": "a.example.com"})
    catalog.load()
    write(tmp_path, "s/b.json", {"name": "b", "port": 80, "loadBalancerUrl": "a.example.com"})
    services, problems = catalog.load()
    assert sorted((s.name, s.frontend) for s in services) == [("a", "a.example.com"),
                                                              ("b", "x.example.com")]
    assert [p.file for p in problems] == ["s/b.json"]


def test_a_missing_service_file_keeps_the_services_in_force(tmp_path: Path) -> None:
    """Defect 2: deleting the only service file retires nothing; [] does."""
    path = write(tmp_path, "services.json", [{"name": "a", "port": 80}])
    catalog = ServiceCatalog(str(path), "services.json")
    catalog.load()
    path.unlink()
    services, problems = catalog.load()
    assert [s.name for s in services] == ["a"]
    assert [str(p) for p in problems] == [
        "services.json: -: not found; keeping the 1 services in force ([] in the file retires them)"]
    assert catalog.errors == 1
    write(tmp_path, "services.json", [])
    services, problems = catalog.load()
    assert services == () and problems == []


def test_a_metric_without_steps_must_name_max_tasks(tmp_path: Path) -> None:
    """Defect 13c: no ceiling on a task count."""
    write(tmp_path, "config.json", {"serviceDescriptionFilename": "services.json"})
    write(tmp_path, "services.json", [
        {"name": "a", "port": 80, "taskName": "t", "metric": {"type": "redis", "key": "k"},
         "scaling": {"steps": []}},
        {"name": "b", "port": 80, "taskName": "t", "metric": {"type": "redis", "key": "k"}},
        {"name": "c", "port": 80, "taskName": "t", "metric": {"type": "redis", "key": "k"},
         "Scaling": {"MaxTasks": 4}},
        {"name": "d", "port": 80, "taskName": "t", "metric": {"type": "redis", "key": "k"},
         "scaling": {"steps": [[0, 1], [10, 5]], "scaleDownDelaySeconds": "soon"}},
    ])
    result = run_warden(tmp_path, "validate")
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "services.json: [0].scaling.maxTasks: is required when the scaling has no steps "
        "(a metric alone could ask for any number of tasks) (service 'a')",
        "services.json: [1].scaling.maxTasks: is required when the scaling has no steps "
        "(a metric alone could ask for any number of tasks) (service 'b')",
        "services.json: [3].scaling.scaleDownDelaySeconds: must be a number of seconds from 0 to 86400 (service 'd')",
    ]
    from warden.policy import Policy

    assert Policy.from_spec({"steps": [[0, 1], [10, 5]]}).wanted(1e6, ((0, 1), (10, 5))) == 5
    assert Policy.from_spec({"maxtasks": 4}).wanted(1e6, ()) == 4


def test_alerts_settings_are_checked(tmp_path: Path) -> None:
    """Defect 15: "events": "errors" became a set of letters, a file:// URL killed the
    sender thread."""
    write(tmp_path, "config.json", {"alerts": {"webhookUrl": "file:///etc/passwd", "events": "errors",
                                               "colour": "red"}})
    result = run_warden(tmp_path, "validate")
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "config.json: alerts.webhookUrl: must be an http:// or https:// URL",
        "config.json: alerts.events: must be a list of event kinds (leadership, errors, scaling, drain, routes)",
        "config.json: alerts.colour: unknown key, ignored (warning)",
        "services.json: -: not found",
    ]
    write(tmp_path, "services.json", [])
    write(tmp_path, "config.json", {"alerts": {"webhookUrl": "https://hooks.example.com/x",
                                               "events": ["errors", "pages"]}})
    result = run_warden(tmp_path, "validate")
    assert result.stdout.splitlines() == [
        "config.json: alerts.events: unknown event kind 'pages' (known: leadership, errors, scaling, drain, routes)"]


def test_an_instance_id_that_cannot_name_a_redis_client_is_exit_2(tmp_path: Path) -> None:
    """Defect 14: an instanceId with a space could never stand (Redis refuses it as a
    client name, and the liveness holder retried forever)."""
    write(tmp_path, "config.json", {"instanceId": "i 123", "serviceDescriptionFilename": "s.json"})
    write(tmp_path, "s.json", [])
    result = run_warden(tmp_path, "validate")
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "config.json: instanceId: must be 1 to 128 letters, digits, '-', '_', '.' or ':'"]
    write(tmp_path, "config.json", {"serviceDescriptionFilename": "s.json", "zoneCheck": "none",
                                    "serviceManagementRedisAddress": "127.0.0.1:1"})
    result = subprocess.run([sys.executable, "-m", "warden", "manager"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=30,
                            env={**__import__("os").environ, "WARDEN_INSTANCE_ID": "i 123",
                                 "WARDEN_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"})
    assert result.returncode == 2, result.stderr
    # Read with every WARDEN_<KEY> variable, it is a config problem naming the variable.
    assert result.stderr.strip() == ("warden: config.json: WARDEN_INSTANCE_ID: must be 1 to "
                                     "128 letters, digits, '-', '_', '.' or ':'")


def test_readiness_is_checked(tmp_path: Path) -> None:
    write(tmp_path, "config.json", {"serviceDescriptionFilename": "services.json"})
    write(tmp_path, "services.json", [
        {"name": "a", "port": 80, "readiness": "tcp"},
        {"name": "b", "port": 80, "readiness": {"HTTP": "/healthz"}},
        {"name": "c", "port": 80, "Readiness": "http"},
        {"name": "d", "port": 80, "readiness": {"http": "healthz"}},
        {"name": "e", "port": 80, "readiness": {"http": "/", "tcp": True}},
    ])
    result = run_warden(tmp_path, "validate")
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        'services.json: [2].Readiness: must be "tcp", "none" or {"http": "/path"} (service \'c\')',
        'services.json: [3].readiness: has an http path that must start with "/" and hold no spaces (service \'d\')',
        'services.json: [4].readiness: must be "tcp", "none" or {"http": "/path"} (service \'e\')',
    ]
    write(tmp_path, "config.json", {"serviceDescriptionFilename": "services.json",
                                    "readinessReportSeconds": 0})
    result = run_warden(tmp_path, "validate")
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "config.json: readinessReportSeconds: must be a number of seconds from 0.1 to 86400, not 0",
        'services.json: [2].Readiness: must be "tcp", "none" or {"http": "/path"} (service \'c\')',
        'services.json: [3].readiness: has an http path that must start with "/" and hold no spaces (service \'d\')',
        'services.json: [4].readiness: must be "tcp", "none" or {"http": "/path"} (service \'e\')',
    ], "the service files' problems with the config's"


def test_an_unknown_run_task_parameter_is_a_warning(tmp_path: Path) -> None:
    write(tmp_path, "config.json", {"serviceDescriptionFilename": "services.json"})
    write(tmp_path, "services.json", [{"name": "a", "port": 80, "taskName": "a",
                                       "runTask": {"launchType": "FARGATE", "lauchType": "EC2"}}])
    result = run_warden(tmp_path, "validate")
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines() == [
        "services.json: [0].runTask.lauchType: unknown RunTask parameter, ignored (service 'a') (warning)"]


def test_a_misspelt_key_names_the_closest_one_and_strict_refuses_it(tmp_path: Path) -> None:
    write(tmp_path, "config.json", {"serviceDescriptionFilename": "services.json",
                                    "metricsAdress": "127.0.0.1:9723", "colour": "blue",
                                    "alerts": {"webhookUlr": "https://hooks.example.com/x"}})
    write(tmp_path, "services.json", [{"name": "web", "port": 80, "contianerName": "acme/web"}])
    result = run_warden(tmp_path, "validate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        'config.json: metricsAdress: unknown key, ignored; did you mean "metricsAddress"? (warning)',
        "config.json: colour: unknown key, ignored (warning)",
        'config.json: alerts.webhookUlr: unknown key, ignored; did you mean "webhookUrl"? (warning)',
        'services.json: [0].contianerName: unknown key, ignored; did you mean "containerName"? '
        "(service 'web') (warning)",
    ]
    strict = run_warden(tmp_path, "validate", "--strict")
    assert strict.returncode == 2
    assert strict.stdout == result.stdout
    assert "0 error(s), 4 warning(s) (--strict)" in strict.stderr


def test_fields_are_checked_together_and_an_array_entrys_problems_name_its_service(tmp_path: Path) -> None:
    write(tmp_path, "config.json", {"serviceDescriptionFilename": "services.json"})
    write(tmp_path, "services.json", [
        {"name": "web", "port": 80, "taskName": "web", "metric": {"type": "static", "value": 1},
         "scaling": {"minTasks": 5, "maxTasks": 2}},
        {"name": "api", "port": 80, "metric": {"type": "static", "value": 1}, "scaling": {"maxTasks": 2}},
        {"name": "shop", "port": 80, "targetGroupArn": "shop-targets", "targetPort": 80},
        {"port": 80},
    ])
    result = run_warden(tmp_path, "validate")
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "services.json: [0].scaling.minTasks: is more than maxTasks (2) (service 'web')",
        "services.json: [1].taskName: is required with a metric: it names the task definition the leader runs "
        "(service 'api')",
        "services.json: [2].targetGroupArn: must be a target group ARN "
        "(arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID) (service 'shop')",
        "services.json: [3].name: is required",
    ]


def test_container_names_that_match_too_much_are_warnings(tmp_path: Path) -> None:
    write(tmp_path, "config.json", {"serviceDescriptionFilename": "services"})
    write(tmp_path, "services/a.json", [{"name": "tiny", "port": 80, "containerName": "a"},
                                        {"name": "web", "port": 80, "containerName": "acme/web"}])
    write(tmp_path, "services/b.json", {"name": "web-admin", "port": 80, "containerName": "acme/web-admin"})
    result = run_warden(tmp_path, "validate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "services/a.json: [0].containerName: 'a' is part of nearly every image and container name: "
        "give at least 3 characters, or label the containers (service 'tiny') (warning)",
        "services/b.json: containerName: overlaps containerName 'acme/web' of service 'web' "
        "(services/a.json): a container whose image or name holds 'acme/web-admin' belongs to both; "
        "label such containers warden.service (warning)",
    ]
    services, _ = ServiceCatalog(str(tmp_path / "services"), "services").load()
    assert sorted(s.name for s in services) == ["tiny", "web", "web-admin"], "warnings load"


def test_values_that_are_choices_match_in_any_case(tmp_path: Path) -> None:
    write(tmp_path, "config.json", {"serviceDescriptionFilename": "services.json", "zoneCheck": "EC2",
                                    "containerLabels": "On",
                                    "alerts": {"webhookUrl": "https://hooks.example.com/x",
                                               "events": ["Leadership"]}})
    write(tmp_path, "services.json", [{"name": "web", "port": 80, "readiness": "TCP", "taskName": "web",
                                       "metric": {"type": "Static", "value": 2}, "scaling": {"maxTasks": 3},
                                       "runTask": {"launchType": "fargate"}}])
    result = run_warden(tmp_path, "validate")
    assert result.returncode == 0, result.stdout + result.stderr
    config, _ = load_config(str(tmp_path / "config.json"))
    assert config.zone_check == "ec2" and config.container_labels is True
    [web], _ = ServiceCatalog(str(tmp_path / "services.json"), "services.json").load()
    assert web.readiness.kind == "tcp"
    assert web.run_task.parameters["launchType"] == "FARGATE"


def test_numbers_that_are_not_finite_or_out_of_range_are_refused(tmp_path: Path) -> None:
    """Python's JSON reader takes NaN and Infinity: a NaN heartbeat spun the leader's
    loop, an Infinity sweep period killed the Registrar's thread, a NaN lease exited 1.
    Every number is finite and in its documented range, in ``validate`` and at start."""
    write(tmp_path, "config.json", '{"heartbeatIntervalSeconds": NaN, "registrarSleepTimeSeconds": Infinity,'
                                   ' "managerSleepTimeSeconds": 1e300, "leaseSeconds": -Infinity,'
                                   ' "guardTimeSeconds": 0.001, "readinessReportSeconds": 1e9}')
    write(tmp_path, "services.json", '[{"name": "a", "port": 80, "taskName": "t",'
                                     ' "metric": {"type": "static", "value": 1},'
                                     ' "scaling": {"steps": [[NaN, 1]], "maxTasks": 100000000000}},'
                                     ' {"name": "b", "port": 80, "taskName": "t",'
                                     ' "metric": {"type": "static", "value": 1},'
                                     ' "scaling": {"steps": [[0, 1], [Infinity, 3]],'
                                     ' "scaleDownDelaySeconds": NaN}}]')
    result = run_warden(tmp_path, "validate")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for line in (
        "config.json: heartbeatIntervalSeconds: must be a number of seconds from 0.05 to 60, not NaN",
        "config.json: registrarSleepTimeSeconds: must be a number of seconds from 0.1 to 86400, not Infinity",
        "config.json: managerSleepTimeSeconds: must be a number of seconds from 0.1 to 86400, not 1e+300",
        "config.json: leaseSeconds: must be a number of seconds from 0.1 to 3600, not -Infinity",
        "config.json: guardTimeSeconds: must be a number of seconds from 0.05 to 300, not 0.001",
        "config.json: readinessReportSeconds: must be a number of seconds from 0.1 to 86400, not 1000000000.0",
    ):
        assert line in lines, (line, lines)
    # The daemon refuses the same file at start, as a configuration error: exit 2.
    for command in ("registrar", "manager", "run"):
        started = run_warden(tmp_path, command)
        assert started.returncode == 2, (command, started.stderr)
        assert "heartbeatIntervalSeconds: must be a number of seconds from 0.05 to 60, not NaN" in started.stderr
    write(tmp_path, "config.json", {})
    result = run_warden(tmp_path, "validate")
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "services.json: [0].scaling.steps: must be a list of [threshold, tasks] pairs "
        "(a finite threshold, tasks from 0 to 10000) (service 'a')",
        "services.json: [0].scaling.maxTasks: must be a whole number from 0 to 10000 (service 'a')",
        "services.json: [1].scaling.steps: must be a list of [threshold, tasks] pairs "
        "(a finite threshold, tasks from 0 to 10000) (service 'b')",
        "services.json: [1].scaling.scaleDownDelaySeconds: must be a number of seconds from 0 to 86400 "
        "(service 'b')",
    ]
    write(tmp_path, "config.json", '{"leaseSeconds": NaN}')
    started = run_warden(tmp_path, "manager")
    assert started.returncode == 2, started.stderr
    assert "config.json: leaseSeconds: must be a number of seconds from 0.1 to 3600, not NaN" in started.stderr


def test_a_candidate_entry_that_dies_before_its_election_closes_is_refused(tmp_path: Path) -> None:
    """A candidate entry shorter than the election it entered never claims: the
    candidate stands again at 80 % of its entry's life, before the close, every time,
    and nobody is elected. The combination is refused with the reason."""
    write(tmp_path, "config.json", {"candidateExpirySeconds": 1, "guardTimeSeconds": 1})
    write(tmp_path, "services.json", [])
    result = run_warden(tmp_path, "validate")
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "config.json: candidateExpirySeconds: must be at least twice guardTimeSeconds (2 s here): "
        "an entry must outlive the election it entered"]
    write(tmp_path, "config.json", {"candidateExpirySeconds": 2, "guardTimeSeconds": 1})
    assert run_warden(tmp_path, "validate").returncode == 0


@pytest.mark.parametrize("settings, problem", [
    ({"handlers": ["redx", "elbv2"]},
     "config.json: handlers: handler 'elbv2': no entry point of that name in group warden.handlers"),
    ({"metricsAddress": "0.0.0.0:97x3"},
     "config.json: metricsAddress: must be host:port"),
    ({"metricsAddress": "::1:9723"},
     "config.json: metricsAddress: must be host:port"),
    ({"metricsAddress": "127.0.0.1:70000"},
     "config.json: metricsAddress: must be host:port"),
])
def test_validate_refuses_what_run_refuses_with_the_same_words(tmp_path: Path, settings: dict,
                                                                 problem: str) -> None:
    """``validate`` printed ``ok`` for a handler no entry point provides and a metrics
    address that is no port; ``run`` then refused them (exit 2)."""
    write(tmp_path, "services.json", [{"name": "web", "containerName": "web", "port": 8080}])
    # Everything run needs before its stores, so that it stops at the same check.
    write(tmp_path, "config.json", {"serviceDescriptionFilename": "services.json", "instanceId": "i-1",
                                    "region": "us-east-1", "zoneCheck": "none",
                                    "serviceManagementRedisAddress": "127.0.0.1:9", **settings})
    checked = run_warden(tmp_path, "validate")
    assert checked.returncode == 2 and problem in checked.stdout, checked.stdout + checked.stderr
    ran = run_warden(tmp_path, "manager")
    assert ran.returncode == 2 and problem in ran.stderr, ran.stderr


def test_validate_reports_the_service_files_problems_with_the_configs(tmp_path: Path) -> None:
    """A config error stopped ``validate`` before it read the service files: a user
    fixed one file, ran it again, and only then learnt of the other's problems."""
    write(tmp_path, "services.json", [{"name": "web", "containerName": "web", "port": "eighty"}])
    write(tmp_path, "config.json", {"serviceDescriptionFilename": "services.json", "leaseSeconds": -1})
    checked = run_warden(tmp_path, "validate")
    assert checked.returncode == 2
    assert "config.json: leaseSeconds:" in checked.stdout, checked.stdout
    assert "services.json: [0].port:" in checked.stdout, checked.stdout


def test_a_central_redis_left_at_its_default_is_said_loudly(tmp_path: Path) -> None:
    """A host whose config forgot serviceManagementRedisAddress elected itself on its own
    127.0.0.1:6379 and scaled the cluster's services, with no word of it."""
    write(tmp_path, "services.json", [{"name": "web", "containerName": "web", "port": 8080}])
    write(tmp_path, "config.json", {"serviceDescriptionFilename": "services.json", "instanceId": "i-1",
                                    "region": "us-east-1", "zoneCheck": "none",
                                    "nginxRedisAddress": "127.0.0.1:9"}, central=False)
    warning = "config.json: serviceManagementRedisAddress: not set, so the central Redis is this host's own"
    checked = run_warden(tmp_path, "validate")
    assert checked.returncode == 0 and warning in checked.stdout, checked.stdout
    assert run_warden(tmp_path, "validate", "--strict").returncode == 2
    ran = run_warden(tmp_path, "manager")
    assert warning in ran.stderr, ran.stderr
    write(tmp_path, "config.json", {"serviceDescriptionFilename": "services.json", "handlers": ["redx"]},
          central=False)
    assert warning not in run_warden(tmp_path, "validate").stdout, "no ecs handler: nothing scales"
