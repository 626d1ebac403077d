"""The oldest versions ``setup.cfg`` allows are the versions that work: a fresh venv
with every floor pinned runs the unit tier, reaches Docker and leads an election.
(``docker>=6`` allowed docker 6.0, which cannot talk to Docker with today's
``requests``: ``Not supported URL scheme http+docker``.)"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import venv
from pathlib import Path

from conftest import ROOT, eventually


def floors() -> list[str]:
    """Each install requirement pinned to its floor (``redis>=5.0,<9`` -> ``redis==5.0``)."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    pins = []
    for line in setup["options"]["install_requires"].split("\n"):
        if line.strip():
            found = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)(,<[0-9.]+)?", line.strip())
            assert found, f"install_requires: {line!r} has no floor (NAME>=VERSION[,<MAJOR])"
            pins.append(f"{found[1]}=={found[2]}")
    return pins


def test_every_requirement_has_a_floor_and_an_upper_bound():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    lines = [x.strip() for x in setup["options"]["install_requires"].split("\n") if x.strip()]
    unbounded = [x for x in lines if ",<" not in x]
    assert not unbounded, f"no upper bound below the next major: {unbounded}"


def test_the_floor_versions_run_the_unit_tier_reach_docker_and_lead(tmp_path: Path, central_server):
    copy = tmp_path / "warden"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in files.split():
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + floors() + ["pytest"], check=True, timeout=600)
    subprocess.run(pip + ["--no-deps", str(copy)], check=True, timeout=600)

    # -P: the installed package is the one tested (the copy's warden/ lacks warden.handlers,
    # which only installing maps from handlers/).
    unit = subprocess.run([python, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit"], cwd=copy,
                          capture_output=True, text=True, timeout=300)
    assert unit.returncode == 0, unit.stdout[-3000:]

    (tmp_path / "services.json").write_text(json.dumps([{"name": "web", "containerName": "web", "port": 8080}]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
    env.update(WARDEN_SERVICE_DESCRIPTION_FILENAME=str(tmp_path / "services.json"), WARDEN_HANDLERS="[]",
               WARDEN_SERVICE_MANAGEMENT_REDIS_ADDRESS=f"127.0.0.1:{central_server.port}",
               WARDEN_NGINX_REDIS_ADDRESS=f"127.0.0.1:{central_server.port}", WARDEN_ZONE_CHECK="none",
               WARDEN_INSTANCE_ID="i-floor", WARDEN_REGION="us-east-1", WARDEN_LEASE_SECONDS="2",
               WARDEN_GUARD_TIME_SECONDS="0.5", WARDEN_HEARTBEAT_INTERVAL_SECONDS="0.5")
    status = subprocess.run([python, "-m", "warden", "status"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)
    assert "cannot reach Docker" not in status.stdout + status.stderr, status.stdout + status.stderr

    log = tmp_path / "manager.log"
    with open(log, "wb") as out:
        manager = subprocess.Popen([python, "-m", "warden", "manager"], cwd=tmp_path, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        import redis

        central = redis.Redis(port=central_server.port, db=11, decode_responses=True)
        eventually(lambda: central.hget("service-manager", "id") == "i-floor" or manager.poll() is not None,
                   20, what="a manager on the floor versions leads")
        assert manager.poll() is None, log.read_text()[-3000:]
    finally:
        manager.terminate()
        assert manager.wait(30) == 0, log.read_text()[-3000:]
