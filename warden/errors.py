"""The one small hierarchy of errors that Warden raises across its boundaries.

Library errors (docker, redis, botocore) are translated where they are caught, so the
loops above them only ask one question: was a connection lost (back off and retry) or
did something else go wrong (log it and carry on)?
"""

from __future__ import annotations


class WardenError(Exception):
    """Base of every error Warden raises on purpose."""


class ConfigError(WardenError):
    """The configuration or a service description is invalid; the CLI exits 2."""


class ConnectionLost(WardenError):
    """Docker, a Redis or an AWS endpoint did not answer; retry with backoff."""


class BadAnswer(WardenError):
    """Docker or another service answered with something Warden cannot read (a listing
    entry without ``Id``): the step fails and is tried again; nothing is taken from it."""


class ContainerGone(WardenError):
    """A container vanished between an event and its inspection."""


class MetricError(WardenError):
    """A demand metric (or a scaling policy's steps) could not be read; the message
    says why."""
