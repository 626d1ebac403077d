"""The Manager: the Warden instances of a cluster elect one leader through the central
Redis; the leader heartbeats and is the only one that acts on the cluster.

One thread runs the state machine (follower, candidate, leader). Every decision is made
by an atomic script on the keys (see :mod:`warden.election`); messages only say when
the keys are worth reading:

- The leader renews its record every ``heartbeatIntervalSeconds`` and publishes each
  heartbeat on ``warden:heartbeat``. A follower reads the record only when a heartbeat
  is late, a message calls for it (an election, a new leader, a kill aimed at it), its
  subscription came back (anything published meanwhile was lost), or while it cannot
  hear the channel at all; so its steady-state cost on the central Redis does not grow
  with the fleet. A Perl/Go leader publishes nothing: while one holds the record, it is
  read once a lease.
- Each manager holds its liveness channel ``warden:alive:<instanceId>`` on its pub/sub
  connection: when its process dies, Redis closes that connection and the channel is
  empty. Two followers appointed by the leader (:data:`warden.election.WATCHER_COUNT`)
  look at the leader's channel a few times a second and call an election when it stays
  empty, long before the lease runs out.
- A new leader acts only once its claim reached a replica (``WAIT``), so a failover of
  the central Redis cannot hand its epoch to someone else.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional, Union

import redis

from warden import signals
from warden.central import ACL_DOC, Central, describe, refused
from warden.config import Config
from warden.control import ControlMessage, encode
from warden.election import ALIVE_PREFIX, ElectionStore, LeaderView, MayNotLead
from warden.logs import Repeats
from warden.subscribers.channels import ControlSubscriber
from warden.subscribers.zones import ZoneChecker
from warden.threads import StoppableThread

logger = logging.getLogger(__name__)


# -- what other threads tell the Manager -------------------------------------------
# The pub/sub thread, the liveness watch, the drain watcher and the scaler's fencing
# check post these to the Manager's inbox; only the Manager's own thread acts on them,
# so every election field is written by that one thread.

@dataclass(frozen=True)
class Heard:
    """A heartbeat message from another instance, heard at ``at`` (monotonic)."""

    instance_id: str
    epoch: int
    at: float


@dataclass(frozen=True)
class ElectionCalled:
    """Someone called an election on ``warden:election`` at ``at``: stand at once."""

    at: float


@dataclass(frozen=True)
class Look:
    """Read the record at the next step (``forget``: the view is out of date); also
    what a kill aimed at this instance, or a refused fencing check, asks for."""

    forget: bool = False


@dataclass(frozen=True)
class Subscription:
    """The control channels were lost, or are held again."""

    held: bool


@dataclass(frozen=True)
class Appointed:
    """The leader appointed this instance to watch its liveness channel."""

    leader_id: str
    epoch: int


@dataclass(frozen=True)
class Draining:
    """This host drains: it stands in no election from now on."""

    reason: str


@dataclass(frozen=True)
class LeaderGone:
    """A watcher saw the leader's liveness channel empty on two readings."""

    leader_id: str
    epoch: Optional[int]


Input = Union[Heard, ElectionCalled, Look, Subscription, Appointed, Draining, LeaderGone, None]


class LivenessWatch(StoppableThread):
    """A watcher's look at the leader's liveness channel: ``PUBSUB NUMSUB`` every
    ``interval`` seconds while the leader appointed this instance; no subscriber on two
    readings in a row (the second ``confirm`` seconds after the first) calls an
    election at once."""

    #: seconds between readings (two watchers: a reading every 0.125 s on average)
    interval = 0.25
    #: seconds before a zero reading is read again: a leader whose connection blipped
    #: resubscribes at once, well within this
    confirm = 0.05

    #: seconds between looks at whether this instance watches, while it does not (an
    #: appointment wakes it at once)
    idle = 2.0

    #: seconds this instance's own subscription must have been held, and its readings
    #: answered, before an empty channel counts. A central Redis that restarted or failed
    #: over dropped every subscription at once, the leader's with this one's, and the
    #: leader subscribes again within one reconnect backoff (at most 2 s) of the server
    #: being back, as this instance does.
    settle = ControlSubscriber.backoff_cap + 0.5

    def __init__(self, manager: "Manager") -> None:
        super().__init__("warden-liveness-watch")
        self.manager = manager
        #: set by an appointment (and by stop)
        self.wake = threading.Event()
        #: when this instance last lost its subscription, had it back, or a reading
        #: failed (monotonic)
        self.troubled_at = float("-inf")
        self._lost_once = False

    def subscription_changed(self, held: bool) -> None:
        """This instance's subscription was lost, or is back after a loss (not the first
        one at start): the leader's may be down too, for as long as a reconnect takes."""
        if not held or self._lost_once:
            self.troubled_at = time.monotonic()
        self._lost_once = self._lost_once or not held

    def on_stop(self) -> None:
        self.wake.set()

    def _subscribers(self, leader_id: str) -> int:
        """Subscribers of the leader's liveness channel on the server the commands
        reach, read together with this instance's own: a server that does not hold this
        instance's subscription either (a failover under way, the pub/sub connection
        still on the old primary) says nothing about the leader, and counts as trouble
        (``-1``)."""
        reply = self.manager.redis.pubsub_numsub(ALIVE_PREFIX + leader_id, self.manager.alive_channel)
        counts = [int(count) for _, count in reply] if reply else [0, 0]
        if len(counts) < 2 or counts[1] == 0:
            return -1
        return counts[0]

    def run(self) -> None:
        pause = self.interval
        while not self.stopping:
            self.wake.wait(pause)
            self.wake.clear()
            manager = self.manager
            view = manager.view
            if manager.role != "follower" or view is None or not manager.watches(view):
                pause = self.idle
                continue
            if pause == self.idle:
                # Just appointed, at the same moment as the other watcher: a random
                # phase, so that their readings interleave instead of coinciding.
                pause = random.uniform(0, self.interval)
                continue
            pause = self.interval
            # Lost: no judging until it has been back for the settle time (its return
            # sets troubled_at).
            if not manager.subscribed.is_set() or time.monotonic() - self.troubled_at < self.settle:
                continue
            try:
                first = self._subscribers(view.leader_id)
                second = 0 if first or self.stop_event.wait(self.confirm) else self._subscribers(view.leader_id)
            except redis.RedisError:
                first = second = -1
            if first < 0 or second < 0:
                self.troubled_at = time.monotonic()
                continue
            if first > 0 or second > 0 or self.stopping:
                continue
            if manager.view is view:
                logger.warning("leader %s's liveness channel has no subscriber on two readings: "
                               "its process is gone", view.leader_id)
                manager.post(LeaderGone(view.leader_id, view.epoch))


class Leadership:
    """This instance's leadership as the parts that act on the cluster hold it (the
    Scaler, and through it the ECS handler; the AWS events consumer): the role and
    epoch, why acting is held, and the fencing check. Written by the Manager's thread
    only; read from any."""

    def __init__(self, store: ElectionStore, look: Any) -> None:
        self._store = store
        #: asks the Manager to read the record (a refused fencing check)
        self._look = look
        self._lock = threading.Lock()
        #: "follower"; "confirming" (claimed, waiting for a replica to have the claim);
        #: "leader" (acting)
        self.role = "follower"
        self.epoch: Optional[int] = None
        #: why this leader holds every action (too few replicas acknowledge), or ""
        self.held = ""

    def set(self, role: str, epoch: Optional[int]) -> tuple[str, Optional[int]]:
        """The Manager's thread only: the new role and epoch; returns the old ones."""
        with self._lock:
            old = self.role, self.epoch
            self.role, self.epoch = role, epoch
        return old

    @property
    def is_leader(self) -> bool:
        """True while this instance holds the leadership (as last confirmed)."""
        return self.role == "leader"

    @property
    def acting(self) -> bool:
        """True while this instance leads and may act on the cluster: enough replicas
        acknowledged its writes (``minReplicasToAct``)."""
        return self.role == "leader" and not self.held

    def current_epoch(self) -> Optional[int]:
        """The epoch this instance leads under, or None."""
        with self._lock:
            return self.epoch if self.role == "leader" else None

    def fence(self, epoch: Optional[int] = None) -> bool:
        """The fencing check: True only if this instance leads under ``epoch`` (by
        default the epoch it leads under now) and that epoch is still the current one,
        checked atomically in Redis right now. Call it right before every action on the
        cluster, with the epoch the action was decided under; on False, do nothing."""
        leading = self.current_epoch()
        if leading is None or (epoch is not None and epoch != leading) or self.held:
            # Held: said once when it began; every action waits for the replicas.
            return False
        try:
            answer = self._store.fence(leading)
        except redis.RedisError as error:
            logger.warning("fencing check failed: %s", error)
            return False
        if answer != "ok":
            logger.warning("fencing refused epoch %s: %s", leading, answer)
            self._look()
            return False
        return True


class Manager(StoppableThread):
    """This instance's part in the election, and its leadership while it lasts."""

    #: seconds between tries while the central Redis refuses the login or a command a
    #: leader runs (an operator's fix, not a retry, ends that)
    REFUSED_RETRY_SECONDS = 5.0

    def __init__(self, config: Config, central: Central, zones: ZoneChecker) -> None:
        super().__init__("warden-manager")
        self.config = config
        self.me = config.instance_id or ""
        self.zone = config.availability_zone or ""
        self.redis = central.commands
        #: a central Redis outage is logged once, then once a minute with a count
        self.repeats = Repeats(logger)
        #: seconds a WAIT for a replica may take (well within a command's timeout)
        self.confirm_ms = int(central.timeout * 500)
        #: replicas that must acknowledge the leader's writes before it acts
        self.min_replicas = config.min_replicas_to_act
        #: when the current claim was made (monotonic): a claim no replica acknowledged
        #: within the lease is handed back
        self._claimed_at = 0.0
        self.zones = zones
        self.store = ElectionStore(self.redis, self.me, config.lease_seconds,
                                   config.legacy_max_heartbeat_age_seconds,
                                   config.guard_time_seconds, config.candidate_expiry_seconds)
        #: the secret that signs this instance's messages ("" when none is set)
        self.secret = config.control_secrets[0] if config.control_secrets else ""
        #: role, epoch, held and the fencing check: what the acting parts hold
        self.leadership = Leadership(self.store, self.nudge)
        #: when this instance entered the current election (monotonic), or None
        self.candidate_since: Optional[float] = None
        #: seconds after entering that it claims (when the election closes; longer for
        #: an entry that was not the highest)
        self._claim_after = config.guard_time_seconds
        #: the wait for a replica to have the claim was logged
        self._waiting_said = False
        #: the last view of the leader record
        self.view: Optional[LeaderView] = None
        #: True while this host drains: it stands in no election
        self.draining = False
        #: ``"<id>:<epoch>"`` of a leader whose liveness channel a watcher saw empty on
        #: two readings, or ""
        self.gone = ""
        #: the channel this instance's pub/sub connection holds for its liveness
        self.alive_channel = ALIVE_PREFIX + self.me
        #: set while the control channels (this liveness channel among them) are held
        self.subscribed = central.subscribed
        self.resubscribe = central.resubscribe
        #: ``(leader id, epoch)`` that appointed this instance a watcher, or None
        self.appointed: Optional[tuple[str, int]] = None
        #: the highest epoch seen (a claim never goes below it)
        self.highest_epoch = 0
        #: monotonic time of the current leader's last heartbeat message
        self.heard = 0.0
        #: monotonic time of the last look at the record
        self.read_at = 0.0
        #: monotonic time of the last election message
        self.election_heard = -1e9
        #: a look at the record is due at the next step (a message or a watcher said so)
        self._due = True
        #: an election was called: stand at the next step without reading the record
        self._stand_now = False
        #: the next look adds this instance to the managers (after each subscription)
        self._register = True
        #: what other threads tell this one (see :class:`Heard` and the others); None
        #: only wakes it
        self.inbox: "queue.SimpleQueue[Input]" = queue.SimpleQueue()
        self._last_beat = 0.0
        self._next_wake = config.heartbeat_interval_seconds
        self.watch = LivenessWatch(self)
        self.receivers = signals.Receivers((signals.control_received, self._on_control),
                                           (signals.control_subscription, self._on_subscription),
                                           (signals.host_draining, self._on_host_draining))

    # -- public API ------------------------------------------------------------

    @property
    def role(self) -> str:
        return self.leadership.role

    @property
    def epoch(self) -> Optional[int]:
        return self.leadership.epoch

    @property
    def held(self) -> str:
        return self.leadership.held

    @held.setter
    def held(self, reason: str) -> None:
        self.leadership.held = reason

    @property
    def is_leader(self) -> bool:
        return self.leadership.is_leader

    @property
    def acting(self) -> bool:
        return self.leadership.acting

    def fence(self, epoch: Optional[int] = None) -> bool:
        """See :meth:`Leadership.fence`."""
        return self.leadership.fence(epoch)

    def current_epoch(self) -> Optional[int]:
        return self.leadership.current_epoch()

    def nudge(self, forget: bool = False) -> None:
        """Look at the record at once (``forget``: the view is out of date); from any
        thread."""
        self.post(Look(forget))

    def post(self, item: Input) -> None:
        """Tell the Manager's thread something (from any thread); it wakes and takes it
        before its next decision."""
        self.inbox.put(item)

    def watches(self, view: LeaderView) -> bool:
        """True while the leader in ``view`` has this instance watch its liveness."""
        return (view.state == "live" and view.epoch is not None and view.leader_id != self.me
                and self.appointed == (view.leader_id, view.epoch))

    # -- messages ----------------------------------------------------------------

    def publish(self, kind: str, epoch: Optional[int] = None, instance_id: Optional[str] = None) -> None:
        """Publish a nudge on ``warden:<kind>``; a lost message only delays."""
        payload = encode(kind, instance_id or self.me, self.zone, epoch or 0, self.secret)
        try:
            self.redis.publish(f"warden:{kind}", payload)
        except redis.RedisError as error:
            logger.debug("cannot publish %s: %s", kind, error)

    def on_alive_message(self, data: Any) -> None:
        """A message on this instance's liveness channel: the leader appointed it a
        watcher (``"<leader>:<epoch>"``). Anyone could publish there, so it only makes
        this instance look at the leader the record names: never more."""
        text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
        leader_id, _, epoch = text.rpartition(":")
        if leader_id and epoch.isdigit():
            self.post(Appointed(leader_id, int(epoch)))

    def _on_subscription(self, sender: Any, *, held: bool, **kw: Any) -> None:
        self.watch.subscription_changed(held)
        self.post(Subscription(held))

    def _on_host_draining(self, sender: Any, *, reason: str, **kw: Any) -> None:
        self.post(Draining(reason))

    def _on_control(self, sender: Any, *, message: ControlMessage, **kw: Any) -> None:
        # A drain message only wakes the drain watcher (warden.drain), which acts on the key.
        if message.type == "heartbeat" and message.instance_id != self.me:
            self.post(Heard(message.instance_id, message.epoch, time.monotonic()))
        elif message.type == "election" and message.instance_id != self.me:
            self.post(ElectionCalled(time.monotonic()))
        elif message.type == "kill" and message.instance_id == self.me:
            logger.info("kill message received; checking the kill key")
            self.post(Look())

    # -- the inbox, on the Manager's own thread ---------------------------------------

    def _take(self, timeout: float = 0.0) -> None:
        """Act on what the inbox holds, waiting up to ``timeout`` seconds for the first
        item; everything already posted is taken before the next decision."""
        try:
            item = self.inbox.get(timeout=timeout) if timeout > 0 else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(item)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _apply(self, item: Input) -> None:
        if isinstance(item, Heard):
            view = self.view
            if view is not None and (item.instance_id, item.epoch) == (view.leader_id, view.epoch):
                self.heard = item.at
            elif view is None or view.state != "live" or item.epoch > (view.epoch or 0):
                self._due = True  # a new leader: read its record once
        elif isinstance(item, ElectionCalled):
            self.election_heard = item.at
            self._stand_now = True
            self._due = True
        elif isinstance(item, Look):
            if item.forget:
                self.view = None
            self._due = True
        elif isinstance(item, Subscription):
            if item.held:
                # Messages sent while unsubscribed were lost, and a leader may have
                # pruned this instance from the managers meanwhile.
                self._register = True
                self._due = True
        elif isinstance(item, Appointed):
            self.appointed = (item.leader_id, item.epoch)
            self.watch.wake.set()
            logger.info("appointed to watch leader %s's liveness (epoch %s)", item.leader_id, item.epoch)
        elif isinstance(item, Draining):
            if not self.draining:
                self.draining = True
                logger.warning("draining (%s): standing in no election from now on", item.reason)
                if self.role != "follower":
                    self._step_down("draining", release=True)
        elif isinstance(item, LeaderGone):
            view = self.view
            if view is None or (view.leader_id, view.epoch) == (item.leader_id, item.epoch):
                self.gone = f"{item.leader_id}:{item.epoch}"
                self.view = None
                self._due = True

    # -- the loop ------------------------------------------------------------------

    def on_stop(self) -> None:
        self.post(None)

    def run(self) -> None:
        self.zones.watch(self.zone)
        self.zones.lookup()
        self.watch.start()
        # A leader without its liveness subscription would be deposed at once.
        if not self.subscribed.wait(5):
            logger.warning("no liveness subscription yet; standing only once it is held")
        while not self.stopping:
            try:
                self.step()
            except MayNotLead as error:
                # Neither entered nor claimed: no epoch spent. Others lead meanwhile.
                self.candidate_since = None
                self.repeats.failed("central-acl", logging.ERROR,
                                    "not standing for election: the central Redis user may not run %s, "
                                    "which a leader runs (no epoch spent); %s lists what Warden's user needs",
                                    error, ACL_DOC)
                self._next_wake = self.REFUSED_RETRY_SECONDS
            except redis.RedisError as error:
                level = logging.ERROR if refused(error) else logging.WARNING
                self.repeats.failed("central-redis", level, "central Redis %s", describe(error))
                self._lost_contact()
                if refused(error):
                    self._next_wake = self.REFUSED_RETRY_SECONDS
            except Exception:  # noqa: BLE001 - the election must outlive any one bug
                logger.exception("manager step failed")
            else:
                self.repeats.ended("central-redis", "central Redis reachable again")
            self._take(self._next_wake)
        self.hand_back()
        self.watch.stop()
        self.watch.join(timeout=5)

    def _lost_contact(self) -> None:
        """Redis did not answer: a leader that cannot renew within the lease is no
        longer one (the record has expired by then)."""
        self._next_wake = min(self.config.heartbeat_interval_seconds, 0.5)
        self._due = True
        if self.role != "follower" and time.monotonic() - self._last_beat > self.config.lease_seconds:
            self._step_down("central Redis unreachable for a lease", release=False)

    def _listening(self) -> bool:
        """True when heartbeat messages stand in for reading the record: a Warden
        leader holds it, this instance hears the channel, and nothing calls for a look.
        Sets when to look again otherwise."""
        view = self.view
        if (self._due or view is None or view.state != "live" or view.epoch is None
                or not self.subscribed.is_set()):
            return False
        now = time.monotonic()
        # A heartbeat more than two and a half periods late, or the safety net's period.
        late = self.heard + 2.5 * self.config.heartbeat_interval_seconds - now
        safety = self.read_at + self.config.manager_sleep_time_seconds - now
        if late <= 0:
            logger.debug("leader %s's heartbeat is late: reading its record", view.leader_id)
            return False
        if safety <= 0:
            self.read_at = now
            if self.store.holder() != (view.leader_id, view.epoch):
                return False
            safety = self.config.manager_sleep_time_seconds
        self._next_wake = max(0.02, min(late, safety))
        return True

    def step(self) -> None:
        """One look at the keys (when due) and whatever follows from it."""
        self._take()
        interval = self.config.heartbeat_interval_seconds
        self._next_wake = interval
        if self.role != "follower":
            self._lead()
            return
        if self._listening():
            return
        self._due = False
        standing = (not self.draining and self.zones.active(self.zone) and self.subscribed.is_set())
        stand_now, self._stand_now = self._stand_now, False
        if (standing and self.candidate_since is not None
                and time.monotonic() - self.candidate_since >= self._claim_after):
            # Claim time: the claim script judges the record itself (and lodges a stale
            # leader's kill), so there is nothing to read first.
            self._campaign()
            return
        if stand_now and standing and self.candidate_since is None:
            # An election was called: enter at once (an entry is harmless while a leader
            # lives, since no claim passes then); the record is read at claim time.
            self._campaign()
            return
        register, self._register = self._register, False
        held = self.subscribed.is_set()
        try:
            view = self.store.check(standing, self.gone, register=register)
        except redis.RedisError:
            self._register = self._register or register
            raise
        self._heard_here(held, view.heard)
        now = time.monotonic()
        self.view, self.read_at = view, now
        if self.watches(view):
            self.watch.wake.set()
        if view.epoch is not None:
            self.highest_epoch = max(self.highest_epoch, view.epoch)
        if view.watcher and view.state == "live" and view.epoch is not None:
            self.appointed = (view.leader_id, view.epoch)
            self.watch.wake.set()
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
                # The heartbeat just read counts as heard; look again when the record
                # would go stale (sooner while heartbeats cannot be heard, and when the
                # next one would be late: _listening decides then).
                self.heard = now - view.age_ms / 1000
                stale_in = limit - view.age_ms / 1000 + 0.02
                # A Perl/Go leader publishes nothing: its record is read once a lease.
                cap = (interval if not self.subscribed.is_set() else
                       self.config.lease_seconds if view.epoch is None else
                       min(self.config.manager_sleep_time_seconds, 2.5 * interval))
                self._next_wake = max(0.02, min(cap, stale_in))
            return
        if not standing:
            return
        if view.state == "stale":
            logger.warning("leader %s is stale (heartbeat %s ms old): kill lodged",
                           view.leader_id, view.age_ms)
            # The first to find it says so; the others heard the election it called.
            if not self._election_called():
                self.publish("kill", instance_id=view.leader_id)
        self._campaign()

    def _election_called(self) -> bool:
        """True when another instance called an election within the guard time."""
        return time.monotonic() - self.election_heard <= self.config.guard_time_seconds

    def _campaign(self) -> None:
        guard = self.config.guard_time_seconds
        now = time.monotonic()
        # Looking again is due until this election ends.
        self._due = True
        # An entry older than guard + lease is dropped by the next claim (and one near
        # its key's expiry is about to vanish): stand again rather than wait on it.
        stale_after = min(max(guard + self.config.lease_seconds, self._claim_after + guard),
                          self.config.candidate_expiry_seconds * 0.8)
        if self.candidate_since is None or now - self.candidate_since > stale_after:
            member, top, closes_in = self.store.stand()
            self.repeats.ended("central-acl", "the central Redis user may run what a leader runs again")
            self.candidate_since = now
            # The highest entry claims when the election closes, a guard time after its
            # first entry, however late it entered itself. An entry below another live
            # one can win only once the entries above it are dropped (their candidates
            # died): it claims no earlier than that, so a fleet's election ends in a few
            # claims, not one per host.
            self._claim_after = closes_in if top else max(guard, self.store.drop_ms / 1000)
            logger.info("standing for election as %s%s", member, "" if top else " (not the highest)")
            # One call is enough: the others stand when they hear it.
            if not self._election_called():
                self.publish("election")
            self._next_wake = self._claim_after
            return
        waited = now - self.candidate_since
        if waited < self._claim_after:
            self._next_wake = self._claim_after - waited
            return
        epoch, why = self.store.claim(self.zone, self.gone, self.highest_epoch)
        if epoch is None:
            logger.debug("no claim: %s", why)
            if why == "not-highest":
                # No live entry at all, mine included: it was dropped; stand again now.
                self.candidate_since = None
                self._next_wake = 0.02
                return
            if why.startswith("leader-live"):
                # Someone leads: no longer a candidate; read its record and follow.
                self.candidate_since = None
                self._next_wake = 0.02
                return
            self._next_wake = min(self.config.heartbeat_interval_seconds, guard)
            return
        self.leadership.set("confirming", epoch)
        self._waiting_said = False
        self._claimed_at = time.monotonic()
        self.highest_epoch = max(self.highest_epoch, epoch)
        self.candidate_since = None
        self._last_beat = time.monotonic()
        # The claim wrote the first heartbeat; followers hear of it at once.
        self.publish("heartbeat", epoch)
        logger.info("claimed leadership: epoch %s", epoch)
        self._lead()

    def _become_leader(self, epoch: int) -> None:
        self.leadership.set("leader", epoch)
        logger.info("leadership gained: epoch %s, zone %s", epoch, self.zone or "-", extra={"epoch": epoch})
        signals.send(signals.leadership_gained, self, instance_id=self.me, epoch=epoch, zone=self.zone)

    def _lead(self) -> None:
        # What was posted while the claim or the last beat was in flight (a drain)
        # counts before this one.
        self._take()
        epoch = self.epoch
        if epoch is None:
            return
        if self.draining:
            # A drain noticed while the claim was in flight found a follower to step down.
            self._step_down("draining", release=True)
            return
        if not self.zones.active(self.zone):
            self._step_down("zone inactive", release=True)
            return
        confirming = self.role == "confirming"
        subscribed = self.subscribed.is_set()
        # With minReplicasToAct, every beat waits for that many replicas; without, a
        # claim is confirmed once, when the primary has a replica to promote.
        want = self.min_replicas or (1 if confirming else 0)
        ok, why, replicated, heard = self.store.heartbeat(epoch, self.zone, want, self.confirm_ms,
                                                          only_with_replicas=not self.min_replicas)
        if not ok:
            self._step_down(why, release=why == "killed")
            return
        self._heard_here(subscribed, heard)
        self._last_beat = time.monotonic()
        self.publish("heartbeat", epoch)
        if confirming:
            if replicated:
                self._become_leader(epoch)
            elif time.monotonic() - self._claimed_at > self.config.lease_seconds:
                # A replica attached that never acknowledges (a full resync, a stalled
                # replica) must not keep the record from everyone for ever.
                reason = (f"no replica acknowledged the claim within the lease "
                          f"({self.config.lease_seconds:g} s; {self._replicas_text()})")
                logger.error("epoch %s handed back: %s", epoch, reason, extra={"epoch": epoch})
                signals.send(signals.claim_abandoned, self, instance_id=self.me, epoch=epoch, reason=reason)
                self._step_down(reason, release=True)
            elif not self._waiting_said:
                self._waiting_said = True
                logger.warning("epoch %s is not on a replica yet: not acting until it is", epoch)
        elif self.min_replicas and replicated == bool(self.held):
            self._hold("" if replicated else
                       f"fewer than {self.min_replicas} replicas acknowledge ({self._replicas_text()})")

    def _replicas_text(self) -> str:
        """How many replicas the primary has attached, for a log line."""
        try:
            return f"{self.store.replicas()} attached, minReplicasToAct {self.min_replicas}"
        except redis.RedisError:
            return f"minReplicasToAct {self.min_replicas}"

    def _hold(self, reason: str) -> None:
        """A leader holds every action while ``reason`` (too few replicas acknowledge:
        its writes could be lost to a failover, or another primary may elect another
        leader), and acts again once it is ""; called at each change, said once."""
        self.held = reason
        if reason:
            logger.error("holding every action on the cluster: %s", reason, extra={"epoch": self.epoch})
        else:
            logger.warning("replicas acknowledge again: acting (epoch %s)", self.epoch, extra={"epoch": self.epoch})
        signals.send(signals.acting_changed, self, instance_id=self.me, epoch=self.epoch,
                     acting=not reason, reason=reason)

    def _heard_here(self, held: bool, heard: bool) -> None:
        """``heard``: the server that answered a script holds this instance's liveness
        subscription. When it does not while the subscription was confirmed all along,
        the pub/sub connection sits on another server (a primary that hung and was
        failed over, now perhaps a replica): nothing published on the primary reaches
        it, and to the watchers this instance looks dead. Subscribe again there."""
        if held and not heard and self.subscribed.is_set() and not self.resubscribe.is_set():
            logger.warning("the central Redis holds none of this instance's subscriptions "
                           "(its pub/sub connection is on another server): subscribing again")
            self.resubscribe.set()

    def _step_down(self, reason: str, release: bool) -> None:
        role, epoch = self.leadership.set("follower", None)
        self.held = ""
        self._due = True
        if role == "leader":
            # Handing over on the way out is the normal end of a leader, not a problem.
            logger.log(logging.INFO if reason == "shutdown" else logging.WARNING,
                       "leadership lost (epoch %s): %s", epoch, reason, extra={"epoch": epoch})
        else:
            logger.warning("claim of epoch %s given up before acting: %s", epoch, reason)
        try:
            if release and epoch is not None:
                self.store.release(epoch)
            else:
                self.store.drop_kill()
        except redis.RedisError as error:
            logger.warning("cannot tidy up after stepping down: %s", error)
        if role == "leader":
            signals.send(signals.leadership_lost, self, instance_id=self.me, epoch=epoch, reason=reason)
        if release:
            self.publish("election")

    def hand_back(self) -> None:
        """On shutdown: hand the record back and call an election, so another
        instance leads within about a guard time."""
        if self.role == "follower":
            return
        self._step_down("shutdown", release=True)
