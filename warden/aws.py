"""AWS clients, all made from one boto3 session per process.

Creating clients from one session on several threads at once is a known botocore race
(a sporadic ``KeyError`` at start-up), and Warden's parts make theirs on threads of
their own. So every client comes from :func:`client`, which makes them one at a time;
the clients themselves are thread-safe.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

import boto3
import botocore.config

_lock = threading.Lock()
_session: Optional[boto3.session.Session] = None


def client(service: str, region: Optional[str], config: botocore.config.Config) -> Any:
    """A boto3 client for ``service`` in ``region`` with ``config`` (timeouts, retries)."""
    global _session
    with _lock:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client(service, region_name=region, config=config)
