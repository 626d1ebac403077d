"""The Manager: the Warden instances of a cluster elect one leader through the central
Redis; the leader heartbeats and is the only one that acts on the cluster.

One thread runs the state machine (follower, candidate, leader). It wakes every
``heartbeatIntervalSeconds``, exactly when the leader's record would go stale, and at
once on a nudge (an election call, a kill aimed at it). Every decision is made by an
atomic script on the keys (see :mod:`warden.election`); messages only wake it early.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from warden import signals
from warden.config import Config
from warden.control import ControlMessage, encode
from warden.election import ALIVE_PREFIX, ElectionStore, LeaderView
from warden.subscribers.channels import close_subscription, open_subscription
from warden.subscribers.zones import ZoneChecker
from warden.threads import ConnectionLoop, StoppableThread

logger = logging.getLogger(__name__)


def central_client(config: Config) -> redis.Redis:
    """A central-Redis client whose calls fail well within the lease: short socket
    timeouts and no hidden retries (redis-py's default retries could hide a dead Redis
    for about as long as a lease)."""
    timeout = max(0.2, min(1.0, config.lease_seconds / 4))
    return config.service_management_redis.client(
        socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0), retry_on_timeout=False)


class LivenessHolder(ConnectionLoop):
    """Holds this instance's subscription to ``warden:alive:<instanceId>`` on a
    connection of its own. When the process dies (crash, OOM kill, ``kill -9``, a
    reboot), Redis closes the connection at once and the channel has no subscriber:
    followers see that within a fraction of a second instead of waiting out a lease. A
    frozen process keeps its socket, so the lease still covers that case."""

    backoff_initial = 0.1
    backoff_cap = 2.0
    #: followers count the channel empty only on two readings LivenessWatch.confirm
    #: apart, so a cut connection must be back well within that
    retry_at_once = True
    what = "liveness subscription"
    lost = (redis.RedisError,)

    def __init__(self, config: Config) -> None:
        super().__init__("warden-alive")
        self.config = config
        self.channel = ALIVE_PREFIX + (config.instance_id or "")

    def open(self) -> Any:
        return open_subscription(self.config.service_management_redis.client(
            socket_connect_timeout=2, client_name=f"warden-alive-{self.config.instance_id}"),
            (self.channel,))

    def close(self, connection: Any) -> None:
        close_subscription(connection)

    def serve(self, connection: Any) -> None:
        _, pubsub = connection
        while not self.stopping:
            # Reading keeps the connection's state current; nothing is published.
            message = pubsub.get_message(timeout=0.5)
            if message and message.get("type") == "subscribe":
                self.held()


class LivenessWatch(StoppableThread):
    """A follower's cheap watch on the leader's liveness channel: ``PUBSUB NUMSUB``
    every ``interval`` seconds; no subscriber on two readings in a row (the second
    ``confirm`` seconds after the first) calls an election at once."""

    #: seconds between readings
    interval = 0.15
    #: seconds before a zero reading is read again: a leader whose connection blipped
    #: resubscribes at once, well within this
    confirm = 0.1

    def __init__(self, manager: "Manager") -> None:
        super().__init__("warden-liveness-watch")
        self.manager = manager
        self.redis = central_client(manager.config)
        #: PUBSUB NUMSUB calls made (for the note on Redis load)
        self.readings = 0

    def _subscribers(self, leader_id: str) -> int:
        self.readings += 1
        reply = self.redis.pubsub_numsub(ALIVE_PREFIX + leader_id)
        return int(reply[0][1]) if reply else 0

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            manager = self.manager
            view = manager.view
            if (manager.role != "follower" or view is None or view.state != "live"
                    or view.epoch is None or view.leader_id == manager.me):
                continue
            try:
                if self._subscribers(view.leader_id) > 0:
                    continue
                if self.stop_event.wait(self.confirm) or self._subscribers(view.leader_id) > 0:
                    continue
            except redis.RedisError:
                continue
            if manager.view is view:
                logger.warning("leader %s's liveness channel has no subscriber on two readings: "
                               "its process is gone", view.leader_id)
                manager.gone = f"{view.leader_id}:{view.epoch}"
                manager.view = None
                manager.wake.set()

    def on_stop(self) -> None:
        pass


class Manager(StoppableThread):
    """This instance's part in the election, and its leadership while it lasts."""

    def __init__(self, config: Config, client: redis.Redis, zones: ZoneChecker) -> None:
        super().__init__("warden-manager")
        self.config = config
        self.me = config.instance_id or ""
        self.zone = config.availability_zone or ""
        self.redis = client
        self.zones = zones
        self.store = ElectionStore(client, self.me, config.lease_seconds,
                                   config.legacy_max_heartbeat_age_seconds,
                                   config.guard_time_seconds, config.candidate_expiry_seconds)
        self.secret = config.control_secret
        self.role = "follower"
        self.epoch: Optional[int] = None
        #: when this instance entered the current election (monotonic), or None
        self.candidate_since: Optional[float] = None
        #: the last view of the leader record (for status)
        self.view: Optional[LeaderView] = None
        #: True while this host drains: it stands in no election
        self.draining = False
        #: ``"<id>:<epoch>"`` of a leader whose liveness channel LivenessWatch saw
        #: empty on two readings, or ""
        self.gone = ""
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._last_beat = 0.0
        self._next_wake = config.heartbeat_interval_seconds
        self.alive = LivenessHolder(config)
        self.watch = LivenessWatch(self)
        self.receivers = signals.Receivers((signals.control_received, self._on_control),
                                           (signals.host_draining, self._on_host_draining))

    # -- public API ------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True while this instance holds the leadership (as last confirmed)."""
        return self.role == "leader"

    def fence(self, epoch: Optional[int] = None) -> bool:
        """The fencing check: True only if this instance leads under ``epoch`` (by
        default the epoch it leads under now) and that epoch is still the current one,
        checked atomically in Redis right now. Call it right before every action on the
        cluster, with the epoch the action was decided under; on False, do nothing."""
        with self._lock:
            leading = self.epoch if self.role == "leader" else None
        if leading is None or (epoch is not None and epoch != leading):
            return False
        try:
            answer = self.store.fence(leading)
        except redis.RedisError as error:
            logger.warning("fencing check failed: %s", error)
            return False
        if answer != "ok":
            logger.warning("fencing refused epoch %s: %s", leading, answer)
            self.wake.set()
            return False
        return True

    def current_epoch(self) -> Optional[int]:
        """The epoch this instance leads under, or None."""
        with self._lock:
            return self.epoch if self.role == "leader" else None

    # -- messages ----------------------------------------------------------------

    def publish(self, kind: str, epoch: Optional[int] = None, instance_id: Optional[str] = None) -> None:
        """Publish a nudge on ``warden:<kind>``; a lost message only delays."""
        payload = encode(kind, instance_id or self.me, self.zone, epoch or 0, self.secret)
        try:
            self.redis.publish(f"warden:{kind}", payload)
        except redis.RedisError as error:
            logger.debug("cannot publish %s: %s", kind, error)

    def _on_host_draining(self, sender: Any, *, reason: str, **kw: Any) -> None:
        if self.draining:
            return
        self.draining = True
        logger.warning("draining (%s): standing in no election from now on", reason)
        if self.role == "leader":
            self._step_down("draining", release=True)
        self.wake.set()

    def _on_control(self, sender: Any, *, message: ControlMessage, **kw: Any) -> None:
        # A drain message only wakes the drain watcher (warden.drain), which acts on the key.
        if message.type == "election" and message.instance_id != self.me:
            self.wake.set()
        elif message.type == "kill" and message.instance_id == self.me:
            logger.info("kill message received; checking the kill key")
            self.wake.set()

    # -- the loop ------------------------------------------------------------------

    def on_stop(self) -> None:
        self.wake.set()

    def run(self) -> None:
        self.zones.watch(self.zone)
        self.zones.lookup()
        self.alive.start()
        self.watch.start()
        # A leader without its liveness subscription would be deposed at once.
        if not self.alive.connected.wait(5):
            logger.warning("no liveness subscription yet; standing only once it is held")
        while not self.stopping:
            try:
                self.step()
            except redis.RedisError as error:
                logger.warning("central Redis unreachable: %s", error)
                self._lost_contact()
            except Exception:  # noqa: BLE001 - the election must outlive any one bug
                logger.exception("manager step failed")
            self.wake.wait(self._next_wake)
            self.wake.clear()
        self.hand_back()
        self.watch.stop()
        self.alive.stop()
        self.watch.join(timeout=5)
        self.alive.join(timeout=5)

    def _lost_contact(self) -> None:
        """Redis did not answer: a leader that cannot renew within the lease is no
        longer one (the record has expired by then)."""
        self._next_wake = min(self.config.heartbeat_interval_seconds, 0.5)
        if self.role == "leader" and time.monotonic() - self._last_beat > self.config.lease_seconds:
            self._step_down("central Redis unreachable for a lease", release=False)

    def step(self) -> None:
        """One look at the keys and whatever follows from it."""
        interval = self.config.heartbeat_interval_seconds
        self._next_wake = interval
        if self.role == "leader":
            self._lead()
            return
        standing = (not self.draining and self.zones.active(self.zone)
                    and self.alive.connected.is_set())
        view = self.store.check(standing, self.gone)
        self.view = view
        if self.gone and self.gone != f"{view.leader_id}:{view.epoch}":
            self.gone = ""
        if view.leader_id == self.me and view.state == "live" and view.epoch is not None:
            # A record of mine that I do not know of: left from before a restart.
            self.store.release(view.epoch)
            self.publish("election")
            return
        if view.state == "live":
            self.candidate_since = None
            if view.leader_id:
                self.zones.watch(view.zone)
            if standing and view.zone and not self.zones.active(view.zone):
                if self.store.kill_if_leader(view.leader_id):
                    logger.warning("leader %s is in inactive zone %s: kill lodged",
                                   view.leader_id, view.zone)
                    self.publish("kill", instance_id=view.leader_id)
            limit = self.config.lease_seconds if view.epoch is not None else \
                self.config.legacy_max_heartbeat_age_seconds
            if view.age_ms >= 0:
                # Wake when the record would go stale, not a whole interval later.
                self._next_wake = max(0.02, min(interval, limit - view.age_ms / 1000 + 0.02))
            return
        if not standing:
            return
        if view.state == "stale":
            logger.warning("leader %s is stale (heartbeat %s ms old): kill lodged",
                           view.leader_id, view.age_ms)
            self.publish("kill", instance_id=view.leader_id)
        self._campaign()

    def _campaign(self) -> None:
        guard = self.config.guard_time_seconds
        now = time.monotonic()
        # An entry older than guard + lease is dropped by the next claim (and one near
        # its key's expiry is about to vanish): stand again rather than wait on it.
        stale_after = min(guard + self.config.lease_seconds, self.config.candidate_expiry_seconds * 0.8)
        if self.candidate_since is None or now - self.candidate_since > stale_after:
            member = self.store.enter()
            self.candidate_since = now
            logger.info("standing for election as %s", member)
            self.publish("election")
            self._next_wake = guard
            return
        waited = now - self.candidate_since
        if waited < guard:
            self._next_wake = guard - waited
            return
        epoch, why = self.store.claim(self.zone, self.gone)
        if epoch is None:
            logger.debug("no claim: %s", why)
            if why == "not-highest":
                # No live entry at all, mine included: it was dropped; stand again now.
                self.candidate_since = None
                self._next_wake = 0.02
                return
            self._next_wake = min(self.config.heartbeat_interval_seconds, guard)
            return
        self._become_leader(epoch)

    def _become_leader(self, epoch: int) -> None:
        with self._lock:
            self.role, self.epoch = "leader", epoch
        self.candidate_since = None
        self._last_beat = time.monotonic()
        # The claim wrote the first heartbeat; followers hear of it at once.
        self.publish("heartbeat", epoch)
        logger.info("leadership gained: epoch %s, zone %s", epoch, self.zone or "-")
        signals.send(signals.leadership_gained, self, instance_id=self.me, epoch=epoch, zone=self.zone)

    def _lead(self) -> None:
        epoch = self.epoch
        assert epoch is not None
        if not self.zones.active(self.zone):
            self._step_down("zone inactive", release=True)
            return
        ok, why = self.store.heartbeat(epoch, self.zone)
        if not ok:
            self._step_down(why, release=why == "killed")
            return
        self._last_beat = time.monotonic()
        self.publish("heartbeat", epoch)

    def _step_down(self, reason: str, release: bool) -> None:
        with self._lock:
            epoch, self.role, self.epoch = self.epoch, "follower", None
        logger.warning("leadership lost (epoch %s): %s", epoch, reason)
        try:
            if release and epoch is not None:
                self.store.release(epoch)
            else:
                self.store.drop_kill()
        except redis.RedisError as error:
            logger.warning("cannot tidy up after stepping down: %s", error)
        signals.send(signals.leadership_lost, self, instance_id=self.me, epoch=epoch, reason=reason)
        if release:
            self.publish("election")

    def hand_back(self) -> None:
        """On shutdown: hand the record back and call an election, so another
        instance leads within about a guard time."""
        if self.role != "leader":
            return
        self._step_down("shutdown", release=True)
