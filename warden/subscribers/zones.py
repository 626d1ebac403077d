"""Which availability zones are active, for the Manager's elections.

``zoneCheck: ec2`` asks DescribeAvailabilityZones (a zone is active when it is listed
as ``available``); ``none`` treats every zone as active. Lookups run on their own
thread with short timeouts, so the heartbeat path only reads a cached answer. A zone
changes state only after two lookups in a row agree (hysteresis), and a failed lookup
keeps the last known answer.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

import botocore.config
import botocore.exceptions

from warden.runtime import aws
from warden.runtime.threads import StoppableThread

logger = logging.getLogger(__name__)

_CLIENT_CONFIG = botocore.config.Config(connect_timeout=2, read_timeout=3,
                                        retries={"mode": "standard", "max_attempts": 2})


class ZoneChecker(StoppableThread):
    """Caches whether zones are active; refreshed every ``interval`` seconds."""

    #: seconds between lookups
    interval = 5.0
    #: lookups in a row that must agree before a zone changes state
    agree = 2

    def __init__(self, mode: str, region: Optional[str]) -> None:
        super().__init__("warden-zones")
        self.mode = mode
        self.region = region
        self._state: dict[str, bool] = {}
        self._streak: dict[str, tuple[bool, int]] = {}
        self._watched: set[str] = set()
        self._lock = threading.Lock()
        self._client = None
        #: failed lookups, for metrics and status
        self.failures = 0

    def watch(self, zone: str) -> None:
        """Keep ``zone``'s state fresh from now on."""
        if zone:
            with self._lock:
                self._watched.add(zone)

    def active(self, zone: str) -> bool:
        """The last known answer; a zone never looked up counts as active."""
        if self.mode == "none" or not zone:
            return True
        self.watch(zone)
        with self._lock:
            return self._state.get(zone, True)

    def lookup(self) -> None:
        """One DescribeAvailabilityZones for every watched zone."""
        if self.mode == "none":
            return
        with self._lock:
            zones = sorted(self._watched)
        if not zones:
            return
        try:
            if self._client is None:
                self._client = aws.client("ec2", self.region, _CLIENT_CONFIG)
            reply = self._client.describe_availability_zones(AllAvailabilityZones=False)
        except aws.ERRORS as error:
            self.failures += 1
            logger.warning("zone lookup failed (%s); keeping the last known answer", error)
            return
        available = {z["ZoneName"] for z in reply.get("AvailabilityZones", [])
                     if z.get("State") == "available"}
        with self._lock:
            for zone in zones:
                seen = zone in available
                last, count = self._streak.get(zone, (seen, 0))
                count = count + 1 if last == seen else 1
                self._streak[zone] = (seen, count)
                known = self._state.get(zone)
                if known is None or (known != seen and count >= self.agree):
                    if known is not None:
                        logger.warning("zone %s is now %s", zone, "active" if seen else "inactive")
                    self._state[zone] = seen

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.lookup()
