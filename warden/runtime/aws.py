"""AWS clients, all made from one boto3 session per process.

Creating clients from one session on several threads at once is a known botocore race
(a sporadic ``KeyError`` at start-up), and Warden's parts make theirs on threads of
their own. So every client comes from :func:`client`, which makes them one at a time;
the clients themselves are thread-safe.

With ``WARDEN_AWS_CALL_LOG`` set to a file's path, every client also appends there the
IAM action each of its calls needs, one a line (``ecs:RunTask``), so a policy can be
checked against what Warden really does (``sort -u`` the file).
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any, Optional

import boto3
import botocore.config
import botocore.exceptions
import botocore.parsers

#: the environment variable naming the file the IAM actions are appended to
CALL_LOG = "WARDEN_AWS_CALL_LOG"

#: what a failed AWS call raises: botocore's own errors, AWS's answers, and an answer
#: botocore cannot parse (a proxy's error page), which is neither
ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
          botocore.parsers.ResponseParserError)
#: IAM's prefix where it is not boto3's name for the service
_IAM_PREFIX = {"elb": "elasticloadbalancing", "elbv2": "elasticloadbalancing"}
#: IAM's action where it is not the operation's name (S3 authorizes HEAD as a read, and
#: a listing as ListBucket)
_IAM_ACTION = {"s3:HeadObject": "s3:GetObject", "s3:ListObjectsV2": "s3:ListBucket"}

_lock = threading.Lock()
_session: Optional[boto3.session.Session] = None


def client(service: str, region: Optional[str], config: botocore.config.Config) -> Any:
    """A boto3 client for ``service`` in ``region`` with ``config`` (timeouts, retries)."""
    global _session
    with _lock:
        if _session is None:
            _session = boto3.session.Session()
        made = _session.client(service, region_name=region, config=config)
    log = os.environ.get(CALL_LOG)
    if log:
        made.meta.events.register("before-parameter-build", functools.partial(_record, service, log))
    return made


def iam_actions(service: str, operation: str, params: dict) -> list[str]:
    """The IAM actions AWS checks for ``operation`` of ``service`` called with ``params``."""
    name = f"{_IAM_PREFIX.get(service, service)}:{operation}"
    actions = [_IAM_ACTION.get(name, name)]
    if name == "ecs:RunTask" and params.get("tags"):
        actions.append("ecs:TagResource")  # tagging on create is authorized on its own
    return actions


def _record(service: str, log: str, model: Any, params: dict, **_: Any) -> None:
    lines = "".join(f"{action}\n" for action in iam_actions(service, model.name, params))
    # One O_APPEND write a call: lines from several processes never interleave.
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, lines.encode())
    finally:
        os.close(fd)


def failure(service: str, error: BaseException, operation: str = "") -> dict:
    """A failed call as the ``aws_call_failed`` signal carries it: ``service`` (boto3's
    name), ``operation`` (``RunTask``) and ``code``, AWS's error code or, for a failure
    with none (a timeout, a refused connection), the exception's class: bounded values,
    fit for metric labels; and ``error``, the text, for logs."""
    response = getattr(error, "response", None)
    code = (response or {}).get("Error", {}).get("Code") if isinstance(response, dict) else None
    return {"service": service, "operation": getattr(error, "operation_name", "") or operation or "unknown",
            "code": code or type(error).__name__, "error": str(error)}
