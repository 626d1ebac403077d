"""The Manager: the Warden instances of a cluster elect one leader through the central
Redis; the leader heartbeats and is the only one that acts on the cluster.

One thread runs the state machine (follower, candidate, leader). Every decision is made
by an atomic script on the keys (see :mod:`warden.manager.election`); messages only say when
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
  empty. Two followers appointed by the leader (:data:`warden.manager.election.WATCHER_COUNT`)
  look at the leader's channel a few times a second and call an election when it stays
  empty, long before the lease runs out.
- A new leader acts only once its claim reached a replica (``WAIT``), so a failover of
  the central Redis cannot hand its epoch to someone else.

What to do next is decided by :class:`warden.manager.machine.ElectionMachine` (no Redis, no
clock of its own); the Manager's thread owns it, feeds it what other threads post, and
carries its actions out against the central Redis.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Any, Optional

import redis

from warden import signals
from warden.config import Config
from warden.control import ControlMessage, encode
from warden.manager.election import ALIVE_PREFIX, ElectionStore, MayNotLead
from warden.manager.liveness import LivenessWatch
from warden.manager.machine import (QUERIES, Abandon, Action, Appointed, Beat, Become, Claim, Confirm, Draining,
                                    ElectionCalled, ElectionMachine, Heard, Hold, Input, KillLeader, LeaderGone,
                                    Look, Publish, Read, Release, Resubscribe, Stand, StepDown, Subscription,
                                    Timing, WakeWatch, WatchZone, World)
from warden.runtime.central import ACL_DOC, Central, describe, refused
from warden.runtime.logs import Repeats
from warden.runtime.threads import StoppableThread
from warden.subscribers.zones import ZoneChecker

__all__ = ["Appointed", "Draining", "ElectionCalled", "Heard", "LeaderGone", "Leadership", "LivenessWatch",
           "Look", "Manager", "Subscription"]

# The name operators filter logs on, kept from before the module moved.
logger = logging.getLogger("warden.manager")


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
    """This instance's part in the election, and its leadership while it lasts: one
    thread that drives the :class:`~warden.manager.machine.ElectionMachine` and carries out
    what it decides. Other threads only post to its inbox."""

    REFUSED_RETRY_SECONDS = ElectionMachine.REFUSED_RETRY_SECONDS

    def __init__(self, config: Config, central: Central, zones: ZoneChecker) -> None:
        super().__init__("warden-manager")
        self.config = config
        self.me = config.instance_id or ""
        self.zone = config.availability_zone or ""
        self.redis = central.commands
        #: a central Redis outage is logged once, then once a minute with a count
        self.repeats = Repeats(logger)
        self.zones = zones
        self.store = ElectionStore(self.redis, self.me, config.lease_seconds,
                                   config.legacy_max_heartbeat_age_seconds,
                                   config.guard_time_seconds, config.candidate_expiry_seconds)
        self.machine = ElectionMachine(self.me, self.zone, Timing(
            heartbeat=config.heartbeat_interval_seconds, lease=config.lease_seconds,
            legacy_age=config.legacy_max_heartbeat_age_seconds, guard=config.guard_time_seconds,
            safety=config.manager_sleep_time_seconds, candidate_expiry=config.candidate_expiry_seconds,
            drop=self.store.drop_ms / 1000, min_replicas=config.min_replicas_to_act,
            # a WAIT for a replica stays well within a command's timeout
            confirm_ms=int(central.timeout * 500)))
        #: the secret that signs this instance's messages ("" when none is set)
        self.secret = config.control_secrets[0] if config.control_secrets else ""
        #: role, epoch, held and the fencing check: what the acting parts hold
        self.leadership = Leadership(self.store, self.nudge)
        #: the channel this instance's pub/sub connection holds for its liveness
        self.alive_channel = ALIVE_PREFIX + self.me
        #: set while the control channels (this liveness channel among them) are held
        self.subscribed = central.subscribed
        self.resubscribe = central.resubscribe
        #: what other threads tell this one (see :mod:`warden.manager.machine`); None only
        #: wakes it
        self.inbox: "queue.SimpleQueue[Input]" = queue.SimpleQueue()
        #: the action being carried out (the one a Redis error interrupted)
        self._doing: Optional[Action] = None
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

    @property
    def is_leader(self) -> bool:
        return self.leadership.is_leader

    @property
    def acting(self) -> bool:
        return self.leadership.acting

    @property
    def view(self) -> Any:
        """The last view of the leader record (read by the liveness watch)."""
        return self.machine.view

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

    def watches(self, view: Any) -> bool:
        """True while the leader in ``view`` has this instance watch its liveness."""
        return self.machine.watches(view)

    # -- messages ----------------------------------------------------------------

    def publish(self, kind: str, epoch: Optional[int] = None, instance_id: Optional[str] = None) -> None:
        """Publish a nudge on ``warden:<kind>``; a lost message only delays."""
        payload = encode(kind, instance_id or self.me, self.zone, epoch or 0, self.secret,
                         db=self.config.service_management_redis.db)
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
        # A drain message only wakes the drain watcher (warden.manager.drain), which acts on the key.
        if message.type == "heartbeat" and message.instance_id != self.me:
            self.post(Heard(message.instance_id, message.epoch, time.monotonic()))
        elif message.type == "election" and message.instance_id != self.me:
            self.post(ElectionCalled(time.monotonic()))
        elif message.type == "kill" and message.instance_id == self.me:
            logger.info("kill message received; checking the kill key")
            self.post(Look())

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
                self.machine.may_not_lead()
                self.repeats.failed("central-acl", logging.ERROR,
                                    "not standing for election: the central Redis user may not run %s, "
                                    "which a leader runs (no epoch spent); %s lists what Warden's user needs",
                                    error, ACL_DOC)
            except redis.RedisError as error:
                level = logging.ERROR if refused(error) else logging.WARNING
                self.repeats.failed("central-redis", level, "central Redis %s", describe(error))
                self._carry_out(self.machine.failed(time.monotonic(), self._doing, refused(error)))
            except Exception:  # noqa: BLE001 - the election must outlive any one bug
                logger.exception("manager step failed")
            else:
                self.repeats.ended("central-redis", "central Redis reachable again")
            self._take(self.machine.wake_in)
        self.hand_back()
        self.watch.stop()
        self.watch.join(timeout=5)

    def _take(self, timeout: float = 0.0) -> None:
        """Act on what the inbox holds, waiting up to ``timeout`` seconds for the first
        item; everything already posted is taken before the next decision."""
        try:
            item = self.inbox.get(timeout=timeout) if timeout > 0 else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._carry_out(self.machine.apply(item))
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _world(self) -> World:
        return World(self.subscribed.is_set(), self.zones.active)

    def step(self) -> None:
        """One decision (reading the keys when due) and whatever follows from it."""
        self._take()
        self._carry_out(self.machine.decide(time.monotonic(), self._world()))

    def _carry_out(self, actions: list[Action]) -> None:
        """Carry out ``actions`` in order; a query's answer goes back to the machine,
        and what follows from it is carried out next."""
        pending = deque(actions)
        while pending:
            action = pending.popleft()
            self._doing = action
            answer = self._do(action)
            self._doing = None
            if isinstance(action, QUERIES):
                if isinstance(action, Claim):
                    # What was posted while the claim was in flight (a drain) counts
                    # before the first beat.
                    self._take()
                pending.extendleft(reversed(self.machine.observe(time.monotonic(), self._world(),
                                                                 action, answer)))

    def _do(self, action: Action) -> Any:
        store = self.store
        if isinstance(action, Read):
            return store.check(action.standing, action.gone, register=action.register)
        if isinstance(action, Confirm):
            return store.holder()
        if isinstance(action, Stand):
            entry = store.stand()
            self.repeats.ended("central-acl", "the central Redis user may run what a leader runs again")
            return entry
        if isinstance(action, Claim):
            return store.claim(action.zone, action.gone, action.floor)
        if isinstance(action, Beat):
            return store.heartbeat(action.epoch, action.zone, action.want, action.wait_ms,
                                   only_with_replicas=action.only_with_replicas)
        if isinstance(action, Publish):
            self.publish(action.kind, action.epoch, action.instance_id)
        elif isinstance(action, Release):
            store.release(action.epoch)
        elif isinstance(action, KillLeader):
            if store.kill_if_leader(action.leader_id):
                logger.warning("leader %s is in inactive zone %s: kill lodged", action.leader_id, action.zone)
                self.publish("kill", instance_id=action.leader_id)
        elif isinstance(action, WatchZone):
            self.zones.watch(action.zone)
        elif isinstance(action, WakeWatch):
            self.watch.wake.set()
        elif isinstance(action, Resubscribe):
            self._resubscribe()
        elif isinstance(action, Become):
            self._become(action.role, action.epoch)
        elif isinstance(action, Hold):
            self._hold(action.hold, action.epoch)
        elif isinstance(action, Abandon):
            self._abandon(action.epoch)
        elif isinstance(action, StepDown):
            self._step_down(action)
        return None

    # -- carrying out ----------------------------------------------------------------

    def _become(self, role: str, epoch: int) -> None:
        self.leadership.set(role, epoch)
        if role == "leader":
            logger.info("leadership gained: epoch %s, zone %s", epoch, self.zone or "-", extra={"epoch": epoch})
            signals.send(signals.leadership_gained, self, instance_id=self.me, epoch=epoch, zone=self.zone)

    def _replicas_text(self) -> str:
        """How many replicas the primary has attached, for a log line."""
        min_replicas = self.config.min_replicas_to_act
        try:
            return f"{self.store.replicas()} attached, minReplicasToAct {min_replicas}"
        except redis.RedisError:
            return f"minReplicasToAct {min_replicas}"

    def _hold(self, hold: bool, epoch: Optional[int]) -> None:
        """A leader holds every action while too few replicas acknowledge (its writes
        could be lost to a failover, or another primary may elect another leader), and
        acts again once they do; called at each change, said once."""
        reason = (f"fewer than {self.config.min_replicas_to_act} replicas acknowledge ({self._replicas_text()})"
                  if hold else "")
        self.leadership.held = reason
        if reason:
            logger.error("holding every action on the cluster: %s", reason, extra={"epoch": epoch})
        else:
            logger.warning("replicas acknowledge again: acting (epoch %s)", epoch, extra={"epoch": epoch})
        signals.send(signals.acting_changed, self, instance_id=self.me, epoch=epoch,
                     acting=not reason, reason=reason)

    def _abandon(self, epoch: int) -> None:
        reason = (f"no replica acknowledged the claim within the lease "
                  f"({self.config.lease_seconds:g} s; {self._replicas_text()})")
        logger.error("epoch %s handed back: %s", epoch, reason, extra={"epoch": epoch})
        signals.send(signals.claim_abandoned, self, instance_id=self.me, epoch=epoch, reason=reason)
        self._step_down(StepDown(reason, True, "confirming", epoch))

    def _resubscribe(self) -> None:
        """The server that answered a script holds none of this instance's
        subscriptions while the subscription was confirmed all along: the pub/sub
        connection sits on another server (a primary that hung and was failed over,
        now perhaps a replica), nothing published on the primary reaches it, and to the
        watchers this instance looks dead. Subscribe again there."""
        if self.subscribed.is_set() and not self.resubscribe.is_set():
            logger.warning("the central Redis holds none of this instance's subscriptions "
                           "(its pub/sub connection is on another server): subscribing again")
            self.resubscribe.set()

    def _step_down(self, down: StepDown) -> None:
        self.leadership.set("follower", None)
        self.leadership.held = ""
        epoch = down.epoch
        if down.role == "leader":
            # Handing over on the way out is the normal end of a leader, not a problem.
            logger.log(logging.INFO if down.reason == "shutdown" else logging.WARNING,
                       "leadership lost (epoch %s): %s", epoch, down.reason, extra={"epoch": epoch})
        else:
            logger.warning("claim of epoch %s given up before acting: %s", epoch, down.reason)
        try:
            if down.release and epoch is not None:
                self.store.release(epoch)
            else:
                self.store.drop_kill()
        except redis.RedisError as error:
            logger.warning("cannot tidy up after stepping down: %s", error)
        if down.role == "leader":
            signals.send(signals.leadership_lost, self, instance_id=self.me, epoch=epoch, reason=down.reason)
        if down.release:
            self.publish("election")

    def hand_back(self) -> None:
        """On shutdown: hand the record back and call an election, so another
        instance leads within about a guard time."""
        self._carry_out(self.machine.step_down("shutdown", release=True))
