"""The ``warden`` command's conventions: global options before or after the command,
levels in any case, defaults from the environment, start-up errors one line each (JSON
when asked), and a description in every command's ``--help``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from warden.cli import COMMAND_HELP


def warden(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "warden", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, **env))


def good_config(folder: Path) -> Path:
    (folder / "services.json").write_text(json.dumps([{"name": "web", "port": 80}]))
    path = folder / "x.json"
    path.write_text(json.dumps({"serviceDescriptionFilename": "services.json"}))
    return path


def test_global_options_go_before_or_after_the_command_in_any_case(tmp_path):
    config = good_config(tmp_path)
    for args in (["--config", str(config), "--log-level", "DEBUG", "validate"],
                 ["validate", "--config", str(config), "--log-level", "Debug"],
                 ["--log-level", "error", "validate", "--config", str(config)]):
        result = warden(*args, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stderr)
        assert f"ok: {config} and 1 service(s)" in result.stderr
    # Given on both sides, the one after the command wins.
    result = warden("--config", "missing.json", "validate", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    refused = warden("validate", "--log-level", "loud", cwd=tmp_path)
    assert refused.returncode == 2 and "invalid choice: 'loud'" in refused.stderr


def test_log_level_and_format_come_from_the_environment(tmp_path):
    config = good_config(tmp_path)
    result = warden("--config", str(config), "validate", cwd=tmp_path, WARDEN_LOG_LEVEL="Warning",
                    WARDEN_LOG_FORMAT="JSON")
    assert result.returncode == 0, result.stderr
    bad = warden("--config", str(config), "validate", cwd=tmp_path, WARDEN_LOG_LEVEL="loud")
    assert bad.returncode == 2
    assert bad.stderr == "warden: WARDEN_LOG_LEVEL 'loud' must be one of debug, info, warning, error\n"


def test_start_up_errors_are_one_line_per_problem_and_json_when_asked(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"registrarSleepTimeSeconds": -1, "leaseSeconds": "x"}))
    text = warden("registrar", cwd=tmp_path)
    assert text.returncode == 2
    assert text.stderr.splitlines() == [
        "warden: config.json: registrarSleepTimeSeconds: must be a number of seconds from 0.1 to 86400, not -1",
        "warden: config.json: leaseSeconds: must be a number of seconds from 0.1 to 3600, not 'x'",
    ]
    as_json = warden("registrar", "--log-format", "json", cwd=tmp_path)
    assert as_json.returncode == 2
    entries = [json.loads(line) for line in as_json.stderr.splitlines()]
    assert [(e["level"], e["msg"]) for e in entries] == [
        ("error", "config.json: registrarSleepTimeSeconds: must be a number of seconds from 0.1 to 86400, not -1"),
        ("error", "config.json: leaseSeconds: must be a number of seconds from 0.1 to 3600, not 'x'"),
    ]


def test_every_command_says_what_it_does_in_its_help(tmp_path):
    listing = warden("--help", cwd=tmp_path).stdout
    for command, line in COMMAND_HELP.items():
        result = warden(command, "--help", cwd=tmp_path)
        assert result.returncode == 0
        assert " ".join(result.stdout.split()).count(line) == 1, command
        assert command in listing


def test_json_log_lines_carry_the_time_in_rfc_3339_utc_with_milliseconds(tmp_path):
    """``ts`` was a float of Unix seconds, which log shippers read as a number, not a
    time."""
    import re
    from datetime import datetime, timezone

    before = datetime.now(timezone.utc)
    result = warden("--log-format", "json", "sweep", cwd=tmp_path)
    [line] = result.stderr.splitlines()
    ts = json.loads(line)["ts"]
    assert isinstance(ts, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ts), ts
    at = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert abs((at - before).total_seconds()) < 30


def test_status_without_docker_names_where_it_looked(tmp_path):
    """``warden status`` printed ``Docker: Error while fetching server API version:
    ('Connection aborted.', FileNotFoundError(...))``: no socket, no variable to set."""
    config = good_config(tmp_path)
    socket = tmp_path / "no-docker.sock"
    result = warden("--config", str(config), "status", cwd=tmp_path, DOCKER_HOST=f"unix://{socket}")
    line = next(x for x in result.stdout.splitlines() if "Docker" in x)
    assert f"cannot reach Docker at unix://{socket} (DOCKER_HOST)" in line, result.stdout
