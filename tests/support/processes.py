"""`warden` processes run as a user runs them (one config folder each), managers on the central Redis, and a Manager in the test's own process."""

from __future__ import annotations
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional
import pytest

from support.aws import AWS_ENV
from support.common import eventually
from support.redis import RedisServer


class Warden:
    """A ``warden`` process run as a user would run it, with its own config folder."""

    def __init__(self, folder: Path, redx_port: int, services: Any, **config: Any) -> None:
        self.folder = folder
        self.services_dir = folder / "services"
        self.services_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = folder / "config.json"
        settings = {
            "nginxRedisAddress": f"127.0.0.1:{redx_port}",
            "serviceManagementRedisAddress": f"127.0.0.1:{redx_port}",
            "serviceDescriptionFilename": "services",
            "registrarSleepTimeSeconds": 60,
            "handlers": ["redx", "elb"],
        }
        settings.update(config)
        self.config_path.write_text(json.dumps(settings, indent=1))
        if services is not None:
            self.write_services("services.json", services)
        self.env = dict(os.environ, **AWS_ENV)
        self.process: Optional[subprocess.Popen] = None
        #: SIGTERM sent to this process (a second one would make it exit at once)
        self.stopping = False
        self.log_path = folder / "warden.log"

    def write_services(self, name: str, services: Any) -> Path:
        path = self.services_dir / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(services if isinstance(services, str) else json.dumps(services))
        tmp.rename(path)
        return path

    def command(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        """Run ``warden --config ... ARGS`` to completion."""
        result = subprocess.run(
            [sys.executable, "-m", "warden", "--config", str(self.config_path), *args],
            env=self.env, capture_output=True, text=True, timeout=120)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def start(self, command: str = "registrar", ready: str = "") -> "Warden":
        ready = ready or {"manager": "manager started"}.get(command, "sweep (start-up)")
        # A restart appends to the same log: only this run's lines say it is ready.
        offset = len(self.log())
        self.log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "warden", "--config", str(self.config_path),
             "--log-level", "debug", command],
            env=self.env, stdout=self.log_file, stderr=subprocess.STDOUT)
        eventually(lambda: ready in self.log()[offset:] or self.process.poll() is not None,
                   30, what="warden start-up")
        assert self.process.poll() is None, self.log()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ask_to_stop(self) -> None:
        """SIGTERM, once, without waiting: a test's processes stop side by side."""
        if self.process is not None and not self.stopping:
            self.process.send_signal(signal.SIGTERM)
            self.stopping = True

    def stop(self) -> int:
        """SIGTERM, then the exit code."""
        if self.process is None:
            return 0
        self.ask_to_stop()
        try:
            code = self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(10)
        self.log_file.close()
        self.process, self.stopping = None, False
        return code


@pytest.fixture
def warden(tmp_path: Path, redx_server: RedisServer, moto: str) -> Any:
    """``warden(services, **config)`` makes a Warden (not yet started); each is stopped
    after the test, and must exit 0."""
    made: list[Warden] = []

    def make(services: Any = None, **config: Any) -> Warden:
        instance = Warden(tmp_path / f"w{len(made)}", redx_server.port, services, **config)
        instance.env["AWS_ENDPOINT_URL"] = moto
        made.append(instance)
        return instance

    yield make
    running = {id(i) for i in made if i.process is not None}
    for instance in made:
        instance.ask_to_stop()
    for instance in made:
        code = instance.stop()
        # Shown by pytest when the test failed.
        print(f"--- log of {instance.folder.name} ---\n{instance.log()[-6000:]}")
        if id(instance) in running:
            assert code == 0, f"warden exited {code}:\n{instance.log()[-3000:]}"


@pytest.fixture
def managers(tmp_path: Path, central_server: RedisServer, redx_server: RedisServer, moto: str) -> Any:
    """``managers(instance_id, **config)`` starts a ``warden manager`` with short lease
    and guard times on the central Redis; each is stopped after the test."""
    made: list[Warden] = []

    def make(instance_id: str, start: bool = True, services: Any = (), **config: Any) -> Warden:
        settings = {"serviceManagementRedisAddress": f"127.0.0.1:{central_server.port}",
                    "zoneCheck": "none", "leaseSeconds": 2, "guardTimeSeconds": 0.5,
                    "heartbeatIntervalSeconds": 0.5, "handlers": []}
        settings.update(config)
        instance = Warden(tmp_path / f"m-{instance_id}", redx_server.port, list(services), **settings)
        instance.env.update(AWS_ENDPOINT_URL=moto, WARDEN_INSTANCE_ID=instance_id,
                            WARDEN_AVAILABILITY_ZONE=config.get("availabilityZone", "us-east-1a"))
        made.append(instance)
        if start:
            instance.start("manager")
        return instance

    yield make
    for instance in made:
        if instance.process is not None and instance.process.poll() is None:
            try:
                instance.process.send_signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
        instance.ask_to_stop()
    for instance in made:
        instance.stop()
        # Shown by pytest when the test failed.
        print(f"--- log of {instance.folder.name} ---\n{instance.log()[-6000:]}")


class InProcessManager:
    """A real Manager on the tests' central Redis, made leader by the election scripts
    (its threads are not started: the test drives it)."""

    def __init__(self, tmp_path, central_server, instance: str = "i-a") -> None:
        import dataclasses

        from warden.config import Config, RedisAddress
        from warden.manager.manager import Manager
        from warden.runtime.central import Central
        from warden.subscribers.zones import ZoneChecker

        self.config = dataclasses.replace(
            Config(path=str(tmp_path / "config.json"), display_path="config.json", region="us-east-1"),
            instance_id=instance, zone_check="none",
            service_management_redis=RedisAddress(f"redis://127.0.0.1:{central_server.port}", 11))
        self.manager = Manager(self.config, Central(self.config), ZoneChecker("none", None))

    def lead(self) -> int:
        store = self.manager.store
        store.enter(100)
        epoch, why = store.claim("z")
        assert epoch, why
        # What the machine decides once a replica has the claim, carried out as the
        # Manager's thread would.
        from warden.manager.machine import Become

        self.manager.machine.role, self.manager.machine.epoch = "leader", epoch
        self.manager._carry_out([Become("leader", epoch)])
        return epoch

    def hand_back(self) -> None:
        self.manager._carry_out(self.manager.machine.step_down("test", release=True))

    def close(self) -> None:
        self.manager.receivers.disconnect()

