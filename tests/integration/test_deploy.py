"""What ``deploy/`` ships: the ECS daemon service, registered in the moto server from the
lines of ``deploy/ecs/README.md`` as written, and the systemd unit, checked by
``systemd-analyze verify`` and against what the package installs."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import warden
from conftest import ROOT

ECS = ROOT / "deploy" / "ecs"
UNIT = ROOT / "deploy" / "systemd" / "warden.service"


def readme_commands() -> list[list[str]]:
    """The ``aws ecs`` lines of the fenced shell blocks in deploy/ecs/README.md."""
    blocks = re.findall(r"```sh\n(.*?)```", (ECS / "README.md").read_text(), re.DOTALL)
    return [shlex.split(line) for block in blocks for line in block.splitlines()
            if line.startswith("aws ecs ")]


def as_call(words: list[str]) -> tuple[str, dict]:
    """``aws ecs some-operation --some-option value ...`` as boto3's method and keywords."""
    assert words[:2] == ["aws", "ecs"]
    operation, options = words[2].replace("-", "_"), words[3:]
    params: dict = {}
    for option, value in zip(options[::2], options[1::2]):
        assert option.startswith("--"), f"{option} is not an option"
        if option == "--cli-input-json":
            assert value.startswith("file://")
            params.update(json.loads((ROOT / value[len("file://"):]).read_text()))
        else:
            head, *rest = option[2:].split("-")
            params[head + "".join(word.title() for word in rest)] = value
    return operation, params


def test_the_ecs_readme_registers_the_task_and_creates_the_daemon_service(aws):
    aws.ecs.create_cluster(clusterName="default")
    commands = readme_commands()
    assert [words[2] for words in commands] == ["register-task-definition", "create-service"]
    for words in commands:
        operation, params = as_call(words)
        getattr(aws.ecs, operation)(**params)

    [service] = aws.ecs.describe_services(cluster="default", services=["warden"])["services"]
    assert service["schedulingStrategy"] == "DAEMON"
    definition = aws.ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
    assert definition["family"] == "warden" and definition["networkMode"] == "host"
    [container] = definition["containerDefinitions"]
    assert container["image"] == f"redx-warden:{warden.__version__}", "the image of this version"
    assert container["command"] == ["run"]
    volumes = {v["name"]: v["host"]["sourcePath"] for v in definition["volumes"]}
    mounts = {volumes[m["sourceVolume"]]: m["containerPath"] for m in container["mountPoints"]}
    # The folder holding the Docker socket, not the socket file: a file mount goes stale
    # when dockerd restarts and makes a new socket.
    assert mounts == {"/var/run": "/var/run", "/etc/warden": "/etc/warden"}
    assert container["logConfiguration"]["logDriver"] == "awslogs"
    probe = " ".join(container["healthCheck"]["command"])
    # Liveness, not readiness: a central Redis outage must not restart the fleet.
    assert "/livez" in probe
    # The health check asks the address the task's environment serves the metrics on
    # (metricsAddress is off by default: without it ECS replaced the task in a loop).
    [address] = re.findall(r"http://([\d.]+:\d+)/livez", probe)
    environment = {e["name"]: e["value"] for e in container["environment"]}
    assert environment.get("WARDEN_METRICS_ADDRESS") == address, environment


def test_the_systemd_unit_is_hardened_and_still_reaches_the_docker_socket():
    unit = UNIT.read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", unit, re.MULTILINE))
    for name, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                        "ProtectHome": "yes", "PrivateTmp": "yes"}.items():
        assert settings.get(name) == value, f"{name}={value}"
    # The socket is reached by connect(), which a read-only file system allows; nothing
    # may take AF_UNIX away or hide /run.
    assert "AF_UNIX" in settings["RestrictAddressFamilies"].split()
    assert "/run" not in settings.get("InaccessiblePaths", "")
    assert "User" not in settings, "the Docker socket is root's (or the docker group's)"
    assert settings["ExecStart"].split()[0] == "/opt/warden/venv/bin/warden"


def test_the_units_documentation_is_installed_by_the_package(tmp_path):
    """Documentation= names a file under the virtual environment of ExecStart: the
    package's wheel must put it there."""
    settings = dict(re.findall(r"^(\w+)=(.*)$", UNIT.read_text(), re.MULTILINE))
    venv = "/opt/warden/venv/"
    assert settings["Documentation"].startswith("file://" + venv)
    installed = settings["Documentation"][len("file://" + venv):]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, timeout=300)
    [wheel] = tmp_path.glob("redx_warden-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        data = f"redx_warden-{warden.__version__}.data/data/{installed}"
        assert archive.read(data) == (ROOT / "README.md").read_bytes()


def test_systemd_analyze_verifies_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: run scripts/test, which installs Debian's systemd")
    # A root holding this host's own units (docker.service, the targets every service
    # needs), the unit, and the command it runs: this checkout's warden.
    root = tmp_path / "root"
    shutil.copytree("/lib/systemd/system", root / "lib" / "systemd" / "system", symlinks=True)
    assert (root / "lib" / "systemd" / "system" / "docker.service").exists(), "Debian's docker.io"
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    shutil.copy(UNIT, units / UNIT.name)
    command = root / "opt" / "warden" / "venv" / "bin" / "warden"
    command.parent.mkdir(parents=True)
    command.write_text(f'#!/bin/sh\nexec {Path(sys.executable).parent / "warden"} "$@"\n')
    command.chmod(0o755)
    # ExecReload's kill, as every Debian host has it.
    (root / "bin").mkdir()
    shutil.copy(shutil.which("kill") or "/bin/kill", root / "bin" / "kill")
    result = subprocess.run([analyze, "verify", f"--root={root}", UNIT.name],
                            capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "warden.service" in line]
    assert result.returncode == 0 and problems == [], result.stdout + result.stderr
    assert "ExecReload=/bin/kill -HUP $MAINPID" in UNIT.read_text(), "systemctl reload sends SIGHUP"


def test_the_readme_quick_start_shows_the_files_the_tests_run():
    """The quick start's blocks are deploy/quickstart/'s files, so the README cannot
    drift from what test_image runs."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Quick start on an ECS host")
    section = readme[start:readme.index("\n## ", start + 1)]
    blocks = [json.loads(textwrap.dedent(block)) for block in re.findall(r"```json\n(.*?)```", section, re.S)]
    for name in ("config.json", "services/web.json"):
        shipped = json.loads((ROOT / "deploy" / "quickstart" / name).read_text())
        assert shipped in blocks, f"deploy/quickstart/{name} is not shown as it is in the quick start"
    assert "file://deploy/ecs/task-definition.json" in section and "deploy/iam/warden-policy.json" in section


def test_the_ecs_task_drops_every_capability_and_writes_no_file():
    """The task definition ran Warden with Docker's default capabilities on a writable
    root file system."""
    [container] = json.loads((ECS / "task-definition.json").read_text())["containerDefinitions"]
    assert container["readonlyRootFilesystem"] is True
    assert container["linuxParameters"]["capabilities"]["drop"] == ["ALL"]
