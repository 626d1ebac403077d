"""Redis servers of the tests' own: the Redx and central ones, TLS, and a central Redis under three Sentinels."""

from __future__ import annotations
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, Optional
import pytest

from support.common import eventually, free_port, scratch


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
        self.dir = scratch(f"{name}-")

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run scripts/test, which installs it")
        ports = (["--port", "0", "--tls-port", str(self.port), *self.tls.server_options()] if self.tls
                 else ["--port", str(self.port)])
        self.process = subprocess.Popen(
            [binary, *ports, "--bind", "127.0.0.1", "--save", "", "--dir", self.dir,
             "--appendonly", "no", "--protected-mode", "no",
             # A replica's full sync starts at once (Redis waits 5 s for more replicas).
             "--repl-diskless-sync-delay", "0", *self.options],
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
        #: with ``password``: the servers' default user needs it (replicas log in with
        #: it too), and with ``sentinel_password`` the Sentinels need theirs; with
        #: ``tls`` every connection (clients, replication, Sentinels) is TLS only
        self.password, self.sentinel_password, self.tls = password, sentinel_password, tls
        self.auth = ["--requirepass", password, "--masterauth", password] if password else []
        first = RedisServer("central-a", *self.auth, tls=tls)
        self.servers = [first, RedisServer("central-b", *self.auth, tls=tls)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen] = []
        self.dir = scratch("sentinel-")

    def start(self) -> None:
        binary = shutil.which("redis-sentinel")
        if binary is None:
            pytest.fail("redis-sentinel is not installed: run scripts/test, which installs it")
        first, second = self.servers
        first.start()
        second.options = ["--replicaof", "127.0.0.1", str(first.port), *self.auth]
        second.start()
        self.wait_replicated()
        # Each Sentinel is told its own id, its peers and the replica, as a Sentinel
        # writes them in its own file once it has met them: it would otherwise take
        # them from hello messages and INFO over several seconds.
        ids = {port: uuid.uuid4().hex + uuid.uuid4().hex[:8] for port in self.sentinel_ports}
        for port in self.sentinel_ports:
            conf = Path(self.dir) / f"sentinel-{port}.conf"
            known = f"sentinel myid {ids[port]}\n" + f"sentinel known-replica {self.master} 127.0.0.1 {second.port}\n"
            known += "".join(f"sentinel known-sentinel {self.master} 127.0.0.1 {peer} {ids[peer]}\n"
                             for peer in self.sentinel_ports if peer != port)
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
                            f"sentinel failover-timeout {self.master} 4000\n{auth}{known}")
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

    def restart_as_replica(self, old: RedisServer, seconds: float = 30) -> RedisServer:
        """Start ``old`` (a killed primary) again as the replica of the new one, as an
        operator does, once every Sentinel names the same primary other than ``old``;
        returns the new primary. Back any earlier, the old primary could be taken for
        the primary again by a Sentinel that had not heard of the failover, and the new
        one made its replica: emptied."""
        def agreed() -> bool:
            named = {tuple(self.ask(p, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master))
                     for p in self.sentinel_ports}
            return len(named) == 1 and int(next(iter(named))[1]) != old.port

        eventually(agreed, seconds, what="every Sentinel naming the new primary")
        primary = self.primary()
        old.options = ["--replicaof", "127.0.0.1", str(primary.port), *self.auth]
        old.start()
        return primary

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

