"""The test harness: real Redis servers, a real Docker engine and the moto server.

Everything is started by the tests on loopback ports of their own; no test uses or
flushes a Redis it did not start. When Docker, redis-server or moto is missing, the
tests that need it fail with a message naming it; they never skip.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("WARDEN_TEST_IMAGE", "warden-test:latest")
#: every container and network a test run makes carries this label, for clean-up
LABEL = "warden.test"
#: the ports the tests' services use
PORTS = (80, 7000, 8080, 9000, 9090)
#: what a test container runs unless told otherwise: a server answering on every port
#: the tests use (so it passes a readiness probe), under a PID 1 that ignores SIGTERM
#: (so ``docker stop`` leaves it running until the kill, as a slow server would)
SERVE = ("sh -c 'for port in " + " ".join(map(str, PORTS))
         + "; do httpd -p $port -h /www; done; exec sleep 600'")
RUN = uuid.uuid4().hex[:8]
#: the IAM action of every AWS call Warden's own clients make during the run, in this
#: process and the ``warden`` processes it starts (warden/aws.py appends them), for
#: tests/test_iam_policy.py, which runs after all the others
AWS_CALLS = Path(tempfile.mkdtemp(prefix="warden-aws-calls-")) / "actions"
os.environ["WARDEN_AWS_CALL_LOG"] = str(AWS_CALLS)
#: whether this run runs every test module in full (nothing deselected)
WHOLE_RUN = {"deselected": False}


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Tests marked ``after_all`` go last: they read what the others did."""
    items.sort(key=lambda item: item.get_closest_marker("after_all") is not None)


def pytest_deselected(items: list[pytest.Item]) -> None:
    WHOLE_RUN["deselected"] = True


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(AWS_CALLS.parent, ignore_errors=True)


def http_get(url: str) -> tuple[int, str]:
    """GET ``url`` (2 s at most): its status and body, an error status included."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
               what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as error:  # noqa: BLE001 - keep polling through transient errors
            last = error
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


class TlsFiles:
    """A certificate authority of the test's own and a certificate it signed for
    127.0.0.1 and localhost (made with ``cryptography``, which moto brings)."""

    def __init__(self, folder: Path) -> None:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        folder.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "warden test CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .sign(ca_key, hashes.SHA256()))
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                            x509.DNSName("localhost")]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        self.ca, self.cert, self.key = folder / "ca.pem", folder / "server.pem", folder / "server.key"
        self.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))

    def server_options(self) -> list[str]:
        """redis-server (and Sentinel) options: TLS on every connection, in and out."""
        return ["--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
                "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no", "--tls-replication", "yes"]

    def client_options(self) -> dict:
        return {"ssl": True, "ssl_ca_certs": str(self.ca)}


class RedisServer:
    """A redis-server of the tests' own on a loopback port, with nothing persisted
    (with ``tls``: on that port over TLS only)."""

    def __init__(self, name: str, *options: str, tls: Optional[TlsFiles] = None) -> None:
        self.name = name
        self.tls = tls
        self.port = free_port()
        #: more redis-server arguments (``--replicaof HOST PORT``)
        self.options = list(options)
        #: the default user's password (``--requirepass``), or none
        self.password = next((options[i + 1] for i, o in enumerate(options[:-1]) if o == "--requirepass"), None)
        self.process: Optional[subprocess.Popen] = None
        #: its own folder: a test that SAVEs gets the data back after a restart
        import tempfile

        self.dir = tempfile.mkdtemp(prefix=f"warden-test-{name}-")

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run scripts/test, which installs it")
        ports = (["--port", "0", "--tls-port", str(self.port), *self.tls.server_options()] if self.tls
                 else ["--port", str(self.port)])
        self.process = subprocess.Popen(
            [binary, *ports, "--bind", "127.0.0.1", "--save", "", "--dir", self.dir,
             "--appendonly", "no", "--protected-mode", "no", *self.options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, password=self.password, **self.connect_options())
        eventually(client.ping, 10, what=f"{self.name} redis-server on port {self.port}")
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self) -> Any:
        import redis

        return redis.Redis(port=self.port, decode_responses=True, password=self.password,
                           **self.connect_options())

    def connect_options(self) -> dict:
        """What a client needs besides the port and password (TLS)."""
        return self.tls.client_options() if self.tls else {}


@pytest.fixture(scope="session")
def redx_server() -> Any:
    """This host's Redx Redis, as the tests run it."""
    server = RedisServer("redx")
    server.start()
    yield server
    server.stop()


def emptied(server: RedisServer, db: int = 0) -> Any:
    """A client of ``server`` (started again if a test stopped it), emptied."""
    import redis

    if server.process is None or server.process.poll() is not None:
        server.start()
    client = redis.Redis(port=server.port, db=db, decode_responses=True)
    client.flushall()
    return client


@pytest.fixture
def redx(redx_server: RedisServer) -> Any:
    """A client of the tests' Redx Redis, emptied before each test."""
    client = emptied(redx_server)
    yield client
    client.close()


@pytest.fixture(scope="session")
def docker_client() -> Any:
    """A client of the real Docker engine, with the offline test image built."""
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as error:  # noqa: BLE001
        pytest.fail(f"no Docker engine answers ({error}): run scripts/test, which starts one")
    subprocess.run(["bash", str(ROOT / "scripts" / "build-test-image.sh")], check=True)
    # Containers an interrupted earlier run left behind would be matched by image.
    _clean_docker(client, run=None)
    yield client
    _clean_docker(client)
    client.close()


def _clean_docker(client: Any, run: Optional[str] = RUN) -> None:
    label = f"{LABEL}={run}" if run else LABEL
    for container in client.containers.list(all=True, filters={"label": label}):
        try:
            container.remove(force=True)
        except Exception:  # noqa: BLE001 - gone already
            pass
    for network in client.networks.list(filters={"label": label}):
        try:
            network.remove()
        except Exception:  # noqa: BLE001
            pass


class Containers:
    """Starts labelled test containers from the offline image; removes them after."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._numbers = itertools.count(1)  # next() on it is safe from several threads

    def run(self, name: str = "", command: str = SERVE, labels: Optional[dict] = None,
            **kw: Any) -> Any:
        full = f"wt-{RUN}-{name or 'c'}-{next(self._numbers)}"
        container = self.client.containers.run(
            IMAGE, command, name=full, detach=True,
            labels={LABEL: RUN, **(labels or {})}, **kw)
        container.reload()
        return container

    def network(self, name: str, **kw: Any) -> Any:
        return self.client.networks.create(f"wt-{RUN}-{name}", labels={LABEL: RUN}, **kw)


@pytest.fixture
def containers(docker_client: Any) -> Any:
    """Start containers with ``containers.run(name, ...)``; all go after the test."""
    helper = Containers(docker_client)
    yield helper
    _clean_docker(docker_client)


def ip_of(container: Any, network: str = "bridge") -> str:
    """A container's IPv4 address on ``network``."""
    container.reload()
    return container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]


@pytest.fixture(scope="session")
def moto() -> Any:
    """The moto server on a port of its own; yields its endpoint URL."""
    binary = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    if binary is None:
        pytest.fail("moto_server is not installed: run scripts/test, which installs moto[server]")
    port = free_port()
    process = subprocess.Popen([binary, "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    eventually(lambda: urllib.request.urlopen(url + "/moto-api/", timeout=1).status == 200,
               30, what="moto server")
    yield url
    process.terminate()
    process.wait(10)


AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture
def aws(moto: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """boto3 pointed at the moto server (for the test's own calls too)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    import boto3

    class Clients:
        endpoint = moto

        def __getattr__(self, service: str) -> Any:
            return boto3.client(service, region_name="us-east-1")

    return Clients()


@pytest.fixture
def events(aws: Any) -> Any:
    """An SQS queue fed by an EventBridge rule; ``events.emit(type, source, detail)``."""
    name = f"warden-events-{uuid.uuid4().hex[:6]}"
    url = aws.sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    rule = f"rule-{name}"
    aws.events.put_rule(Name=rule, EventPattern=json.dumps(
        {"source": ["aws.ecs", "aws.cloudwatch", "aws.ec2", "aws.autoscaling"]}))
    aws.events.put_targets(Rule=rule, Targets=[{"Id": "warden", "Arn": arn}])

    class Events:
        queue_url = url

        def emit(self, detail_type: str, source: str, detail: dict) -> None:
            reply = aws.events.put_events(Entries=[{"Source": source, "DetailType": detail_type,
                                                     "Detail": json.dumps(detail)}])
            assert reply["FailedEntryCount"] == 0

        def waiting(self) -> int:
            attributes = aws.sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                              "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
            return int(attributes["ApproximateNumberOfMessages"]) + \
                int(attributes["ApproximateNumberOfMessagesNotVisible"])

    return Events()


@pytest.fixture
def ecs(aws: Any) -> Any:
    """A cluster on moto's ECS with a Fargate task definition."""
    cluster = f"c-{uuid.uuid4().hex[:6]}"
    family = f"web-{uuid.uuid4().hex[:6]}"
    aws.ecs.create_cluster(clusterName=cluster)
    aws.ecs.register_task_definition(family=family, requiresCompatibilities=["FARGATE"],
                                     networkMode="awsvpc", cpu="256", memory="512",
                                     containerDefinitions=[{"name": "web", "image": "web",
                                                            "memory": 64, "cpu": 10}])
    client = aws.ecs
    subnet = aws.ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    group = aws.ec2.describe_security_groups()["SecurityGroups"][0]["GroupId"]

    class Ecs:
        name = cluster
        task_family = family
        awsvpc = {"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group],
                                          "assignPublicIp": "DISABLED"}}

        def tasks(self, **filters):
            arns = client.list_tasks(cluster=cluster, family=family, desiredStatus="RUNNING")["taskArns"]
            found = []
            for start in range(0, len(arns), 100):
                found += client.describe_tasks(cluster=cluster, tasks=arns[start:start + 100],
                                               include=["TAGS"])["tasks"]
            return found

    return Ecs()



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

    def stop(self) -> int:
        """SIGTERM, then the exit code."""
        if self.process is None:
            return 0
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(10)
        self.log_file.close()
        self.process = None
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
    for instance in made:
        running = instance.process is not None
        code = instance.stop()
        # Shown by pytest when the test failed.
        print(f"--- log of {instance.folder.name} ---\n{instance.log()[-6000:]}")
        if running:
            assert code == 0, f"warden exited {code}:\n{instance.log()[-3000:]}"


@pytest.fixture(scope="session")
def central_server() -> Any:
    """The central Redis of the tests' cluster."""
    server = RedisServer("central")
    server.start()
    yield server
    server.stop()


class SentinelCentral:
    """A central Redis run as in production under Sentinel: a primary, a replica and
    three ``redis-sentinel`` processes watching them (quorum 2, a primary is down after
    1 s without answers), all on loopback ports of the tests' own."""

    master = "central"

    def __init__(self, password: Optional[str] = None, sentinel_password: Optional[str] = None,
                 tls: Optional[TlsFiles] = None) -> None:
        import tempfile

        #: with ``password``: the servers' default user needs it (replicas log in with
        #: it too), and with ``sentinel_password`` the Sentinels need theirs; with
        #: ``tls`` every connection (clients, replication, Sentinels) is TLS only
        self.password, self.sentinel_password, self.tls = password, sentinel_password, tls
        self.auth = ["--requirepass", password, "--masterauth", password] if password else []
        first = RedisServer("central-a", *self.auth, tls=tls)
        self.servers = [first, RedisServer("central-b", *self.auth, tls=tls)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen] = []
        self.dir = tempfile.mkdtemp(prefix="warden-test-sentinel-")

    def start(self) -> None:
        binary = shutil.which("redis-sentinel")
        if binary is None:
            pytest.fail("redis-sentinel is not installed: run scripts/test, which installs it")
        first, second = self.servers
        first.start()
        second.options = ["--replicaof", "127.0.0.1", str(first.port), *self.auth]
        second.start()
        self.wait_replicated()
        for port in self.sentinel_ports:
            conf = Path(self.dir) / f"sentinel-{port}.conf"
            auth = f"sentinel auth-pass {self.master} {self.password}\n" if self.password else ""
            if self.sentinel_password:
                auth += f"requirepass {self.sentinel_password}\n"
            if self.tls:
                options = self.tls.server_options()
                auth += f"port 0\ntls-port {port}\n" + "".join(
                    f"{options[i][2:]} {options[i + 1]}\n" for i in range(0, len(options), 2))
            else:
                auth += f"port {port}\n"
            conf.write_text(f"bind 127.0.0.1\nprotected-mode no\ndir {self.dir}\n"
                            f"sentinel monitor {self.master} 127.0.0.1 {first.port} 2\n"
                            f"sentinel down-after-milliseconds {self.master} 1000\n"
                            f"sentinel failover-timeout {self.master} 4000\n{auth}")
            self.sentinels.append(subprocess.Popen([binary, str(conf)], stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.DEVNULL))

        def ready() -> bool:
            for port in self.sentinel_ports:
                state = self.ask(port, "SENTINEL", "MASTER", self.master)
                if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                    return False
            return True

        eventually(ready, 30, what="three Sentinels that know each other and the replica")

    def ask(self, port: int, *command: str) -> Any:
        import redis

        client = redis.Redis(port=port, decode_responses=True, socket_timeout=2, password=self.sentinel_password,
                             **self.connect_options())
        try:
            reply = client.execute_command(*command)
        finally:
            client.close()
        if isinstance(reply, list) and command[:2] == ("SENTINEL", "MASTER"):
            return dict(zip(reply[::2], reply[1::2]))
        return reply

    def primary(self) -> RedisServer:
        """The server the Sentinels name the primary now."""
        host, port = self.ask(self.sentinel_ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master)
        return next(s for s in self.servers if s.port == int(port))

    def wait_replicated(self) -> None:
        """Until every running server other than the primary is its replica, in sync."""
        import redis

        def synced() -> bool:
            for server in self.servers:
                info = redis.Redis(port=server.port, password=self.password,
                                   **self.connect_options()).info("replication")
                if info["role"] == "slave" and info.get("master_link_status") != "up":
                    return False
            return True

        eventually(synced, 30, what="the replica in sync")

    def settings(self) -> dict:
        """The config keys that point Warden at these Sentinels."""
        return {"serviceManagementRedisSentinels": [f"127.0.0.1:{p}" for p in self.sentinel_ports],
                "serviceManagementRedisSentinelMaster": self.master}

    def client(self, db: int = 11) -> Any:
        """A client that follows the primary across a failover."""
        from redis.sentinel import Sentinel

        return Sentinel([("127.0.0.1", p) for p in self.sentinel_ports], socket_timeout=1,
                        sentinel_kwargs={"password": self.sentinel_password, "socket_timeout": 1,
                                         **self.connect_options()}).master_for(
            self.master, db=db, decode_responses=True, socket_timeout=1, password=self.password,
            **self.connect_options())

    def connect_options(self) -> dict:
        return self.tls.client_options() if self.tls else {}

    def kill_primary(self) -> RedisServer:
        """``kill -9`` of the primary; returns it (not running)."""
        server = self.primary()
        assert server.process is not None
        server.process.kill()
        server.process.wait()
        server.process = None
        return server

    def stop(self) -> None:
        for process in self.sentinels:
            process.terminate()
        for process in self.sentinels:
            process.wait(10)
        for server in self.servers:
            server.stop()


@pytest.fixture
def sentinel_central() -> Any:
    """A central Redis under three Sentinels (see :class:`SentinelCentral`)."""
    group = SentinelCentral()
    try:
        group.start()
        yield group
    finally:
        group.stop()


@pytest.fixture
def central(central_server: RedisServer) -> Any:
    """A client of the central Redis (database 11), emptied before each test."""
    client = emptied(central_server, db=11)
    yield client
    client.close()


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
        instance.stop()
        # Shown by pytest when the test failed.
        print(f"--- log of {instance.folder.name} ---\n{instance.log()[-6000:]}")


@contextlib.contextmanager
def serve_http(handler: type) -> Any:
    """An HTTP server of the test's own on loopback; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, name="test-http")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


class Webhook:
    """What a webhook receiver of the test's own was sent: ``url`` to POST to, and each
    request's ``headers`` and JSON ``bodies``, in order."""

    def __init__(self) -> None:
        self.url = ""
        self.headers: list[dict] = []
        self.bodies: list[dict] = []
        self.paths: list[str] = []


@pytest.fixture
def webhook() -> Any:
    """A webhook receiver on loopback (a :class:`Webhook`), answering 202 to each POST."""
    hook = Webhook()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            hook.headers.append(dict(self.headers))
            hook.bodies.append(body)
            hook.paths.append(self.path)
            self.send_response(202)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with serve_http(Receiver) as url:
        hook.url = f"{url}/hook"
        yield hook


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Any:
    """Fail a test that leaves a thread of its own running."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not extra, f"threads left running: {[t.name for t in extra]}"


class AwsProxy:
    """An HTTP proxy of the tests' own in front of the moto server: it records each AWS
    operation it passes (by ``X-Amz-Target``, or the query protocol's ``Action``) with
    its time, and answers the operations a test names (``plan``), or every request
    (``mode``), with throttling, a 503 or silence."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        #: (monotonic time, operation, request body) of every request
        self.calls: list[tuple[float, str, bytes]] = []
        #: operation -> what to answer, in order: "503", "stall" (then 503), "hold" (then
        #: pass, once the test sets ``unhold``), "pass", or
        #: "empty-result": the query protocol's empty success, a stand-in for an operation
        #: moto lacks (CompleteLifecycleAction); an operation whose list is used up passes
        self.plan: dict[str, list[str]] = {}
        #: what every request gets, whatever the plan: "pass", "throttle", "503", "stall"
        self.mode = "pass"
        #: requests answered with a fault
        self.faults = 0
        #: set at teardown, so a stalled request ends at once
        self.release = threading.Event()
        #: "hold": the request waits here until ``unhold`` is set, then passes
        self.holding = threading.Event()
        self.unhold = threading.Event()
        self.url = ""

    def operation(self, headers: Any, body: bytes) -> str:
        target = headers.get("X-Amz-Target")
        if target:
            return target.rsplit(".", 1)[-1]
        from urllib.parse import parse_qs

        return (parse_qs(body.decode(errors="replace")).get("Action") or [""])[0]

    def made(self, operation: str) -> list[tuple[float, str, bytes]]:
        return [c for c in list(self.calls) if c[1] == operation]

    def handler(self) -> type:
        from http.server import BaseHTTPRequestHandler

        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                operation = proxy.operation(self.headers, body)
                proxy.calls.append((time.monotonic(), operation, body))
                planned = proxy.plan.get(operation) or []
                mode = planned.pop(0) if planned else "pass"
                mode = proxy.mode if proxy.mode != "pass" else mode
                if mode not in ("pass", "hold"):
                    proxy.faults += 1
                if mode == "throttle":
                    return self._reply(400, b'{"__type": "ThrottlingException", "message": "Rate exceeded"}')
                if mode == "stall":
                    proxy.release.wait(30)
                    mode = "503"
                if mode == "hold":
                    proxy.holding.set()
                    proxy.unhold.wait(30)
                if mode == "503" and self.headers.get("X-Amz-Target"):
                    return self._reply(503, b'{"__type": "ServiceUnavailable", "message": "down"}')
                if mode == "503":  # the query protocol's error document
                    return self._reply(503, b"<ErrorResponse><Error><Type>Receiver</Type><Code>"
                                            b"ServiceUnavailable</Code><Message>down</Message></Error>"
                                            b"<RequestId>warden-test</RequestId></ErrorResponse>",
                                       "text/xml")
                if mode == "empty-result":
                    return self._reply(200, (
                        f"<{operation}Response><{operation}Result/><ResponseMetadata><RequestId>"
                        f"warden-test</RequestId></ResponseMetadata></{operation}Response>").encode(),
                        "text/xml")
                request = urllib.request.Request(
                    proxy.upstream + self.path, data=body or None, method=self.command,
                    headers={k: v for k, v in self.headers.items()
                             if k.lower() not in ("host", "content-length")})
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        self._reply(response.status, response.read(), response.headers.get("Content-Type"))
                except urllib.error.HTTPError as error:
                    self._reply(error.code, error.read(), error.headers.get("Content-Type"))

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

            def _reply(self, status: int, body: bytes, kind: Any = "application/x-amz-json-1.1") -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", kind or "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def aws_proxy(moto: str) -> Any:
    """An :class:`AwsProxy` in front of the moto server; ``aws_proxy.url`` is its endpoint."""
    proxy = AwsProxy(moto)
    with serve_http(proxy.handler()) as url:
        proxy.url = url
        try:
            yield proxy
        finally:
            proxy.release.set()
            proxy.unhold.set()


@pytest.fixture
def cloud(aws):
    """An EC2 instance standing for this host, a classic ELB and a target group."""
    ec2 = aws.ec2
    image = ec2.describe_images()["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]
    name = f"elb-{RUN}-{time.monotonic_ns() % 10**6}"
    aws.elb.create_load_balancer(
        LoadBalancerName=name, AvailabilityZones=["us-east-1a"],
        Listeners=[{"Protocol": "HTTP", "LoadBalancerPort": 80, "InstancePort": 80}])
    group = aws.elbv2.create_target_group(Name=name, Protocol="HTTP", Port=80,
                                          VpcId=instance["VpcId"])["TargetGroups"][0]

    class Cloud:
        instance_id = instance["InstanceId"]
        elb_name = name
        target_group = group["TargetGroupArn"]
        clients = aws

        def in_elb(self) -> bool:
            reply = aws.elb.describe_load_balancers(LoadBalancerNames=[name])
            return any(i["InstanceId"] == self.instance_id
                       for i in reply["LoadBalancerDescriptions"][0]["Instances"])

        def in_group(self) -> set:
            reply = aws.elbv2.describe_target_health(TargetGroupArn=self.target_group)
            return {(d["Target"]["Id"], d["Target"]["Port"]) for d in reply["TargetHealthDescriptions"]}

    return Cloud()


class InProcessManager:
    """A real Manager on the tests' central Redis, made leader by the election scripts
    (its threads are not started: the test drives it)."""

    def __init__(self, tmp_path, central_server, instance: str = "i-a") -> None:
        import dataclasses

        from warden.config import Config, RedisAddress
        from warden.central import Central
        from warden.manager import Manager
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
        self.manager._become_leader(epoch)
        return epoch

    def hand_back(self) -> None:
        self.manager._step_down("test", release=True)

    def close(self) -> None:
        self.manager.receivers.disconnect()


class DockerProxy:
    """A UNIX-socket proxy of the tests' own in front of dockerd: point ``DOCKER_HOST``
    at ``url``. Each request is read whole and passed to the engine on a connection of
    its own (so every request is seen, even on a kept-alive client connection), unless
    ``plan`` names its path: ``listing`` (``GET /containers/json``) answers, in order,
    ``"500"`` (the engine's error document) or ``"no-id"`` (the real listing with
    ``Id`` dropped from every entry); a used-up plan passes."""

    upstream = "/var/run/docker.sock"

    def __init__(self) -> None:
        # A short path: a UNIX socket's path holds at most 107 bytes.
        self.path = os.path.join(tempfile.mkdtemp(prefix="warden-dp-"), "docker.sock")
        self.url = f"unix://{self.path}"
        self.plan: dict[str, list[str]] = {"listing": []}
        #: (kind, what was answered) of each request the plan named
        self.answered: list[str] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(64)
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="test-docker-proxy")
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        _drop(self._server)
        for sock in list(self._sockets):
            _drop(sock)
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), name="test-docker-proxy-conn",
                             daemon=True).start()

    @staticmethod
    def _read_request(client: socket.socket, buffered: bytes) -> tuple[Optional[bytes], bytes, bytes]:
        """(head, body, what is left over), or head None when the client closed."""
        while b"\r\n\r\n" not in buffered:
            chunk = client.recv(65536)
            if not chunk:
                return None, b"", b""
            buffered += chunk
        head, _, rest = buffered.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(rest) < length:
            chunk = client.recv(65536)
            if not chunk:
                break
            rest += chunk
        return head, rest[:length], rest[length:]

    def _upstream(self, head: bytes, body: bytes) -> socket.socket:
        lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(self.upstream)
        upstream.sendall(b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n" + body)
        self._sockets.append(upstream)
        return upstream

    def _serve(self, client: socket.socket) -> None:
        buffered = b""
        try:
            while not self._stop.is_set():
                head, body, buffered = self._read_request(client, buffered)
                if head is None:
                    return
                method, target = head.split(b" ")[:2]
                path = target.decode().split("?")[0]
                planned = self.plan["listing"] if method == b"GET" and path.endswith("/containers/json") else []
                answer = planned.pop(0) if planned else "pass"
                if answer == "500":
                    self.answered.append("listing:500")
                    payload = b'{"message": "injected by the test: engine error"}'
                    client.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
                    continue
                upstream = self._upstream(head, body)
                if answer == "no-id":
                    self.answered.append("listing:no-id")
                    raw = b""
                    while True:
                        chunk = upstream.recv(65536)
                        if not chunk:
                            break
                        raw += chunk
                    _, _, payload = raw.partition(b"\r\n\r\n")
                    if b"chunked" in raw.partition(b"\r\n\r\n")[0].lower():
                        payload = _unchunk(payload)
                    entries = [{k: v for k, v in e.items() if k != "Id"} for e in json.loads(payload)]
                    payload = json.dumps(entries).encode()
                    client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
                    upstream.close()
                    continue
                while True:
                    chunk = upstream.recv(65536)
                    if not chunk:
                        break
                    client.sendall(chunk)
                upstream.close()
        except OSError:
            pass
        finally:
            client.close()


def _unchunk(data: bytes) -> bytes:
    """An HTTP/1.1 chunked body, joined."""
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2:]
    return out


@pytest.fixture
def docker_proxy(docker_client: Any) -> Any:
    """A :class:`DockerProxy` in front of the tests' engine."""
    proxy = DockerProxy()
    try:
        yield proxy
    finally:
        proxy.close()


class TcpProxy:
    """A TCP proxy of the tests' own on a loopback port, in front of ``upstream_port``.
    :meth:`black_hole` makes the server behind it vanish without a word: every
    connection open through it, and every one opened in the next ``seconds``, stays
    open and silent for ever (it accepts, reads and never answers; the server side is
    closed, so the server drops what they held). Connections opened after that pass
    again."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(256)
        self.port = self._server.getsockname()[1]
        self._lock = threading.Lock()
        #: client socket -> its upstream socket (None once silent)
        self._pairs: dict[socket.socket, Optional[socket.socket]] = {}
        self._silent_until = 0.0
        #: connections accepted, and those made silent
        self.accepted = self.silenced = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="test-tcp-proxy")
        self._thread.start()

    def black_hole(self, seconds: float, reset_open: bool = False) -> None:
        """From now on the server is silent: connections open now stay open without an
        answer (with ``reset_open``, they are reset instead, as when the old server
        died, so their clients connect again at once, into the silence), and so do
        those opened in the next ``seconds``."""
        with self._lock:
            self._silent_until = time.monotonic() + seconds
            for client, upstream in list(self._pairs.items()):
                if upstream is not None:
                    self._pairs[client] = None
                    self.silenced += 1
                    _drop(upstream)
                if reset_open:
                    self._pairs.pop(client, None)
                    _drop(client)

    def close(self) -> None:
        self._stop.set()
        _drop(self._server)
        with self._lock:
            for client, upstream in self._pairs.items():
                _drop(client)
                if upstream is not None:
                    _drop(upstream)
            self._pairs.clear()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                silent = time.monotonic() < self._silent_until
                upstream = None
                if not silent:
                    try:
                        upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
                        upstream.settimeout(None)
                    except OSError:
                        client.close()
                        continue
                else:
                    self.silenced += 1
                self._pairs[client] = upstream
            threading.Thread(target=self._pump_in, args=(client,), daemon=True,
                             name="test-tcp-proxy-in").start()
            if upstream is not None:
                threading.Thread(target=self._pump_out, args=(client, upstream), daemon=True,
                                 name="test-tcp-proxy-out").start()

    def _pump_in(self, client: socket.socket) -> None:
        """Client to server; while silent, read and drop."""
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                with self._lock:
                    upstream = self._pairs.get(client)
                if upstream is not None:
                    upstream.sendall(data)
        except OSError:
            pass
        with self._lock:
            upstream = self._pairs.pop(client, None)
        _drop(client)
        if upstream is not None:
            _drop(upstream)

    def _pump_out(self, client: socket.socket, upstream: socket.socket) -> None:
        """Server to client, until the server side closes or is silenced."""
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                with self._lock:
                    live = self._pairs.get(client) is upstream
                if not live:
                    return
                client.sendall(data)
        except OSError:
            return
        with self._lock:
            if self._pairs.get(client) is not upstream:
                return  # silenced: the client side stays open and unanswered
            self._pairs.pop(client, None)
        _drop(client)


def _drop(sock: socket.socket) -> None:
    """Close ``sock`` so that a thread blocked on it wakes (a bare close does not)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def tcp_proxy() -> Any:
    """``tcp_proxy(port)``: a :class:`TcpProxy` in front of a loopback port; closed
    after the test."""
    made: list[TcpProxy] = []

    def make(port: int) -> TcpProxy:
        proxy = TcpProxy(port)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()
