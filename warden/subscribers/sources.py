"""Service descriptions kept in S3 or in SSM Parameter Store, polled.

``serviceDescriptionFilename`` may be ``s3://bucket/key`` (one object),
``s3://bucket/prefix/`` (every ``*.json`` object under the prefix) or
``ssm:/path/prefix`` (every parameter under the path, each one service object or an
array of them). Each is read every ``serviceSourcePollSeconds`` with the same rules as
files (:class:`warden.services.ServiceCatalog`): a broken or conflicting document keeps
its last good version, a missing source keeps the services in force, and a source that
cannot be read now changes nothing.

An unchanged source costs one cheap call a poll: ``HeadObject`` for one object, one
``ListObjectsV2`` page for a prefix (its ETags say which objects changed; only those
are fetched), one ``GetParametersByPath`` page for a path (values come with it).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import botocore.config
import botocore.exceptions

from warden import signals
from warden.jsonfile import Problem
from warden.runtime import aws
from warden.runtime.threads import StoppableThread
from warden.services import ServiceCatalog, SourceError

logger = logging.getLogger(__name__)

_CLIENT_CONFIG = botocore.config.Config(connect_timeout=3, read_timeout=5,
                                        retries={"mode": "standard", "max_attempts": 3})


def _error_code(error: BaseException) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3Source:
    """``s3://bucket/key`` or ``s3://bucket/prefix/``."""

    def __init__(self, url: str, region: Optional[str]) -> None:
        self.url = url
        self.bucket, _, self.key = url[len("s3://"):].partition("/")
        self.region = region
        self._client: Any = None
        #: key -> (ETag, text) of what was fetched
        self._cache: dict[str, tuple[str, str]] = {}

    def _s3(self) -> Any:
        if self._client is None:
            self._client = aws.client("s3", self.region, _CLIENT_CONFIG)
        return self._client

    def _text(self, key: str, etag: str) -> str:
        cached = self._cache.get(key)
        if cached and cached[0] == etag:
            return cached[1]
        body = self._s3().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        text = body.decode("utf-8", errors="replace")
        self._cache[key] = (etag, text)
        return text

    def read(self) -> Optional[dict[str, str]]:
        try:
            if not self.key.endswith("/"):
                try:
                    head = self._s3().head_object(Bucket=self.bucket, Key=self.key)
                except botocore.exceptions.ClientError as error:
                    if _error_code(error) in ("404", "NoSuchKey", "NotFound"):
                        return None
                    raise
                return {self.url: self._text(self.key, str(head.get("ETag", "")))}
            found: dict[str, str] = {}
            pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.key)
            listed = [item for page in pages for item in page.get("Contents", [])]
            for item in listed:
                if item["Key"].endswith(".json"):
                    found[f"s3://{self.bucket}/{item['Key']}"] = self._text(item["Key"], str(item.get("ETag", "")))
            self._cache = {k: v for k, v in self._cache.items() if f"s3://{self.bucket}/{k}" in found}
            return found
        except aws.ERRORS as error:
            raise SourceError(str(error)) from None


class SsmSource:
    """``ssm:/path/prefix``: every parameter under the path, SecureStrings decrypted."""

    def __init__(self, url: str, region: Optional[str]) -> None:
        self.url = url
        self.path = url[len("ssm:"):]
        self.region = region
        self._client: Any = None

    def read(self) -> Optional[dict[str, str]]:
        try:
            if self._client is None:
                self._client = aws.client("ssm", self.region, _CLIENT_CONFIG)
            pages = self._client.get_paginator("get_parameters_by_path").paginate(
                Path=self.path, Recursive=True, WithDecryption=True)
            return {f"ssm:{p['Name']}": p["Value"] for page in pages for p in page.get("Parameters", [])}
        except aws.ERRORS as error:
            raise SourceError(str(error)) from None


def catalog_for(path: str, display: str, region: Optional[str]) -> ServiceCatalog:
    """The service catalog for ``serviceDescriptionFilename``: files, S3 or SSM."""
    if path.startswith("s3://"):
        return ServiceCatalog(path, display, S3Source(path, region))
    if path.startswith("ssm:"):
        return ServiceCatalog(path, display, SsmSource(path, region))
    return ServiceCatalog(path, display)


class SourcePoller(StoppableThread):
    """Reads an S3 or SSM service source every ``period`` seconds and emits
    ``services_reloaded`` when the services in force changed. A problem is logged when
    it appears, not at every poll."""

    def __init__(self, catalog: ServiceCatalog, period: float) -> None:
        super().__init__("warden-service-source")
        self.catalog = catalog
        self.period = period
        self._said: set[str] = set()
        self._held = repr(catalog.services)

    def run(self) -> None:
        while not self.stop_event.wait(self.period):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the poller must outlive any one bad read
                logger.exception("reading %s failed", self.catalog.display)

    def poll(self) -> bool:
        """One read; True when the services in force changed."""
        services, problems = self.catalog.load()
        self._say(problems)
        held = repr(services)
        if held == self._held:
            return False
        self._held = held
        logger.info("service source %s changed: %d service(s)", self.catalog.display, len(services))
        signals.send(signals.services_reloaded, self, services=services, paths=[self.catalog.path])
        return True

    def _say(self, problems: list[Problem]) -> None:
        now = {str(p) for p in problems}
        for problem in problems:
            if str(problem) not in self._said:
                (logger.warning if problem.warning else logger.error)("service source problem: %s", problem)
        self._said = now

    def reload_now(self) -> int:
        """Read the source now (SIGHUP); the number of services in force."""
        self.poll()
        return len(self.catalog.services)
