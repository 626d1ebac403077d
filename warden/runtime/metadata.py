"""This host's identity: config, then ``WARDEN_*`` environment overrides, then EC2
instance metadata (IMDSv2)."""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from typing import Optional

from warden.config import INSTANCE_ID, INSTANCE_ID_RULE, Config, with_identity
from warden.errors import ConfigError

# The name operators filter logs on, kept from before the module moved.
logger = logging.getLogger("warden.metadata")

#: where instance metadata lives unless AWS_EC2_METADATA_SERVICE_ENDPOINT says otherwise
DEFAULT_ENDPOINT = "http://169.254.169.254"

#: identity field -> (environment override, metadata path)
_FIELDS = {
    "instance_id": ("WARDEN_INSTANCE_ID", "instance-id"),
    "availability_zone": ("WARDEN_AVAILABILITY_ZONE", "placement/availability-zone"),
    "region": ("WARDEN_REGION", "placement/region"),
}

#: the environment overrides, for messages
ENV_KEYS = {field: env for field, (env, _) in _FIELDS.items()}

#: the config keys, for messages
CONFIG_KEYS = {"instance_id": "instanceId", "availability_zone": "availabilityZone",
               "region": "region"}


def metadata_enabled() -> bool:
    """False where the standard ``AWS_EC2_METADATA_DISABLED`` says so."""
    return os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() not in ("true", "1", "yes")


def metadata_endpoint() -> str:
    """Where instance metadata is (``AWS_EC2_METADATA_SERVICE_ENDPOINT`` moves it)."""
    return os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def fetch_metadata(paths: list[str], timeout: float = 1.0) -> Optional[dict[str, str]]:
    """Read ``paths`` under ``/latest/meta-data/`` with an IMDSv2 token: the paths that
    answered, by path. None when instance metadata does not answer at all (not an EC2
    instance, or turned off); never an error. The one IMDSv2 client in Warden."""
    if not metadata_enabled():
        return None
    endpoint = metadata_endpoint()
    try:
        request = urllib.request.Request(
            f"{endpoint}/latest/api/token", method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            token = response.read().decode()
    except (urllib.error.URLError, OSError) as error:
        logger.debug("no instance metadata at %s: %s", endpoint, error)
        return None
    found = {}
    for path in paths:
        request = urllib.request.Request(f"{endpoint}/latest/meta-data/{path}",
                                         headers={"X-aws-ec2-metadata-token": token})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                found[path] = response.read().decode().strip()
        except (urllib.error.URLError, OSError):
            continue
    return found


def resolve_identity(config: Config, needed: tuple[str, ...] = ()) -> Config:
    """``config`` with instanceId, availabilityZone and region filled in from the
    ``WARDEN_*`` overrides, the region also from the standard ``AWS_REGION`` /
    ``AWS_DEFAULT_REGION``, and, only when one of the ``needed`` fields is still
    missing, from instance metadata."""
    values: dict[str, Optional[str]] = {}
    source: dict[str, str] = {}
    for field, (env, _) in _FIELDS.items():
        values[field] = os.environ.get(env) or getattr(config, field)
        source[field] = env if os.environ.get(env) else CONFIG_KEYS[field]
    if not values["region"]:
        values["region"] = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    on_ec2 = config.on_ec2
    if any(not values[field] for field in needed):
        missing = [path for field, (_, path) in _FIELDS.items() if not values[field]]
        fetched = fetch_metadata(missing)
        on_ec2 = on_ec2 or fetched is not None
        fetched = fetched or {}
        for field, (_, path) in _FIELDS.items():
            if not values[field] and fetched.get(path):
                values[field] = fetched[path]
                source[field] = f"instance metadata ({path})"
    instance_id = values["instance_id"]
    if instance_id and not INSTANCE_ID.fullmatch(instance_id):
        # It names Redis keys and client names: one with a space could never stand.
        raise ConfigError(f"instanceId {instance_id!r} from {source['instance_id']} {INSTANCE_ID_RULE}")
    return with_identity(config, on_ec2=on_ec2, **values)
