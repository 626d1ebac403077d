"""The test harness: real Redis servers, a real Docker engine and the moto server.

Everything is started by the tests on loopback ports of their own; no test uses or
flushes a Redis it did not start. When Docker, redis-server or moto is missing, the
tests that need it fail with a message naming it; they never skip.

The parts live in ``tests/support/``, one module each: ``common`` (waiting, ports, a
webhook receiver), ``redis``, ``docker``, ``aws`` (moto and its proxy), ``processes``
(``warden`` processes, managers), ``faults`` (the TCP proxy), ``haproxy`` and ``traefik``. This file makes their
fixtures the tests' and re-exports their helpers (``from conftest import eventually``);
the unit tier (``tests/unit/``) uses none of them; the tests that do live in
``tests/integration/``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from support.common import (  # noqa: F401 - re-exported: the tests' fixtures and helpers
    ROOT, RUN, eventually, free_port, http_get, serve_http, Webhook, webhook)
from support.redis import (  # noqa: F401 - re-exported: the tests' fixtures and helpers
    RedisServer, SentinelCentral, TlsFiles, central, central_server, emptied, redx, redx_server, sentinel_central)
from support.docker import (  # noqa: F401 - re-exported: the tests' fixtures and helpers
    IMAGE, LABEL, PORTS, SERVE, Containers, DockerProxy, containers, docker_client, docker_proxy, ip_of)
from support.aws import (  # noqa: F401 - re-exported: the tests' fixtures and helpers
    AWS_ENV, AwsProxy, aws, aws_proxy, cloud, ecs, events, moto)
from support.processes import (  # noqa: F401 - re-exported: the tests' fixtures and helpers
    InProcessManager, Warden, managers, warden)
from support.faults import (  # noqa: F401 - re-exported: the tests' fixtures and helpers
    TcpProxy, tcp_proxy)
from support.haproxy import Haproxy, haproxy  # noqa: F401 - re-exported: the tests' fixtures
from support.traefik import Traefik, traefik  # noqa: F401 - re-exported: the tests' fixtures

#: the IAM action of every AWS call Warden's own clients make during the run, in this
#: process and the ``warden`` processes it starts (warden/runtime/aws.py appends them), for
#: tests/integration/test_iam_policy.py, which runs after all the others
AWS_CALLS = Path(tempfile.mkdtemp(prefix="warden-aws-calls-")) / "actions"


os.environ["WARDEN_AWS_CALL_LOG"] = str(AWS_CALLS)


#: whether this run runs every test module in full (nothing deselected)
WHOLE_RUN = {"deselected": False}


INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Every test under ``tests/integration/`` is marked ``integration``; tests
    marked ``after_all`` go last: they read what the others did."""
    for item in items:
        if INTEGRATION in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)
    items.sort(key=lambda item: item.get_closest_marker("after_all") is not None)


def pytest_deselected(items: list[pytest.Item]) -> None:
    WHOLE_RUN["deselected"] = True


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(AWS_CALLS.parent, ignore_errors=True)


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

