"""The election as a state machine: what this instance does next, decided from what it
knows, what it is told and the time, with no Redis, thread or clock of its own.

The Manager's thread owns one :class:`ElectionMachine` and drives it:

- :meth:`ElectionMachine.decide` at each wake-up: the actions of one step;
- :meth:`ElectionMachine.apply` for each input another thread posted (a heartbeat
  heard, an election called, an appointment, a drain, a gone leader ...);
- :meth:`ElectionMachine.observe` with the answer to a query action (:class:`Read`,
  :class:`Confirm`, :class:`Stand`, :class:`Claim`, :class:`Beat`), which returns what
  follows from it;
- :meth:`ElectionMachine.failed` when the central Redis did not answer, or refused.

The Manager carries the actions out in order; ``wake_in`` says when to decide again
(sooner if something is posted).

States and transitions (``role``; a follower is also a *candidate* while
``candidate_since`` is set)::

    follower --(record none or stale, or an election called; standing)--> candidate
    candidate --(Stand answered)--> candidate, claims after ``claim_after`` seconds
    candidate --(a live leader read, or its entry dropped)--> follower
    candidate --(Claim granted)--> confirming
    confirming --(Beat: a replica has the claim)--> leader
    confirming --(no replica acknowledged within a lease)--> follower (handed back)
    leader --(Beat: fewer than minReplicasToAct acknowledge)--> leader, holding
    leader / confirming --(Beat refused: killed, not mine, epoch changed)--> follower
    leader / confirming --(draining, zone inactive, shutdown)--> follower (released)
    leader / confirming --(central Redis silent for a lease)--> follower

A follower that hears the leader's heartbeats on the channel does not read the record
(``listening``); it reads when a heartbeat is late, a message calls for it, its
subscription came back, or the safety net's period is up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Union

from warden.manager.election import LeaderView

# The lines this machine logs are the Manager's, under the name they always had.
logger = logging.getLogger("warden.manager")


# -- inputs: what other threads tell the Manager --------------------------------------
# The pub/sub thread, the liveness watch, the drain watcher and the scaler's fencing
# check post these to the Manager's inbox; only the Manager's own thread applies them.

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


# -- actions: what the Manager carries out ---------------------------------------------
# Queries (Read, Confirm, Stand, Claim, Beat) end a list of actions: their answer goes
# back to observe(), which returns what follows.

@dataclass(frozen=True)
class Read:
    """Query: read the leader record (``ElectionStore.check``); when ``standing``, the
    script lodges a stale leader's kill; ``register`` adds this instance to the
    managers. ``held``: the subscription was held when the read was decided."""

    standing: bool
    gone: str
    register: bool
    held: bool


@dataclass(frozen=True)
class Confirm:
    """Query: does the record still name ``leader_id`` under ``epoch``? (The safety
    net's plain read while listening; ``late``: seconds until a heartbeat is late.)"""

    leader_id: str
    epoch: int
    late: float


@dataclass(frozen=True)
class Stand:
    """Query: enter the election (decided at ``at``)."""

    at: float


@dataclass(frozen=True)
class Claim:
    """Query: claim the leadership, above epoch ``floor``."""

    zone: str
    gone: str
    floor: int


@dataclass(frozen=True)
class Beat:
    """Query: renew the record under ``epoch``; ``want`` replicas must acknowledge
    within ``wait_ms`` (none needed when the primary has no replica and
    ``only_with_replicas``). ``held`` and ``confirming`` as when it was decided."""

    epoch: int
    zone: str
    want: int
    wait_ms: int
    only_with_replicas: bool
    held: bool
    confirming: bool


@dataclass(frozen=True)
class Publish:
    """Publish ``warden:<kind>`` (about ``instance_id``, this instance by default)."""

    kind: str
    epoch: Optional[int] = None
    instance_id: Optional[str] = None


@dataclass(frozen=True)
class Release:
    """Hand back a record of this instance's that it does not know of (left from
    before a restart)."""

    epoch: int


@dataclass(frozen=True)
class KillLeader:
    """Lodge a kill for ``leader_id`` (in inactive zone ``zone``) if the record still
    names it, and say so on ``warden:kill``."""

    leader_id: str
    zone: str


@dataclass(frozen=True)
class Become:
    """This instance now holds ``role`` ("confirming" or "leader") under ``epoch``."""

    role: str
    epoch: int


@dataclass(frozen=True)
class StepDown:
    """This instance, ``role`` under ``epoch``, leads no more: tidy up (hand the record
    back when ``release``, else drop the kill key) and say why."""

    reason: str
    release: bool
    role: str
    epoch: Optional[int]


@dataclass(frozen=True)
class Abandon:
    """No replica acknowledged the claim of ``epoch`` within the lease: hand it back
    (the reason names the replicas attached) and step down."""

    epoch: int


@dataclass(frozen=True)
class Hold:
    """Hold every action on the cluster (``hold``: too few replicas acknowledge), or
    act again."""

    hold: bool
    epoch: Optional[int]


@dataclass(frozen=True)
class WatchZone:
    """Keep ``zone``'s state fresh (the leader's zone)."""

    zone: str


@dataclass(frozen=True)
class WakeWatch:
    """Wake the liveness watch: an appointment, or a view it should judge."""


@dataclass(frozen=True)
class Resubscribe:
    """The server that answered holds none of this instance's subscriptions although
    they were held all along: subscribe again there."""


Action = Union[Read, Confirm, Stand, Claim, Beat, Publish, Release, KillLeader, Become, StepDown,
               Abandon, Hold, WatchZone, WakeWatch, Resubscribe]
QUERIES = (Read, Confirm, Stand, Claim, Beat)


@dataclass(frozen=True)
class Timing:
    """The settings the machine decides by (seconds)."""

    heartbeat: float = 1.0
    lease: float = 5.0
    legacy_age: float = 300.0
    guard: float = 1.0
    safety: float = 30.0
    candidate_expiry: float = 30.0
    #: how old an entry may be before an election drops it (ElectionStore.drop_ms)
    drop: float = 7.0
    #: replicas that must acknowledge a leader's writes before it acts
    min_replicas: int = 0
    #: milliseconds a WAIT for a replica may take
    confirm_ms: int = 0


@dataclass(frozen=True)
class World:
    """What the machine reads of the world at a decision: whether the control channels
    are held, and whether a zone is active (a cached answer)."""

    subscribed: bool
    active: Callable[[str], bool]


class ElectionMachine:
    """One instance's part in the election; see the module docstring."""

    #: seconds between tries while the central Redis refuses the login or a command a
    #: leader runs (an operator's fix, not a retry, ends that)
    REFUSED_RETRY_SECONDS = 5.0

    def __init__(self, me: str, zone: str, timing: Timing) -> None:
        self.me = me
        self.zone = zone
        self.t = timing
        #: "follower", "confirming" (claimed, waiting for a replica to have the claim),
        #: "leader"
        self.role = "follower"
        self.epoch: Optional[int] = None
        #: holding every action (too few replicas acknowledge)
        self.holding = False
        #: seconds until the next decision is due
        self.wake_in = timing.heartbeat
        #: when this instance entered the current election, or None
        self.candidate_since: Optional[float] = None
        #: seconds after entering that it claims (when the election closes; longer for
        #: an entry that was not the highest)
        self.claim_after = timing.guard
        #: when the current claim was made: a claim no replica acknowledged within the
        #: lease is handed back
        self.claimed_at = 0.0
        #: the wait for a replica to have the claim was logged
        self.waiting_said = False
        #: when the record was last renewed
        self.last_beat = 0.0
        #: the last view of the leader record
        self.view: Optional[LeaderView] = None
        #: True while this host drains: it stands in no election
        self.draining = False
        #: ``"<id>:<epoch>"`` of a leader whose liveness channel a watcher saw empty on
        #: two readings, or ""
        self.gone = ""
        #: ``(leader id, epoch)`` that appointed this instance a watcher, or None
        self.appointed: Optional[tuple[str, int]] = None
        #: the highest epoch seen (a claim never goes below it)
        self.highest_epoch = 0
        #: when the current leader's last heartbeat message was heard
        self.heard = 0.0
        #: when the record was last read
        self.read_at = 0.0
        #: when the last election message was heard
        self.election_heard = -1e9
        #: a look at the record is due at the next step
        self.due = True
        #: an election was called: stand at the next step without reading the record
        self.stand_now = False
        #: the next look adds this instance to the managers (after each subscription)
        self.register = True

    # -- what it answers --------------------------------------------------------------

    def watches(self, view: LeaderView) -> bool:
        """True while the leader in ``view`` has this instance watch its liveness."""
        return (view.state == "live" and view.epoch is not None and view.leader_id != self.me
                and self.appointed == (view.leader_id, view.epoch))

    def election_called(self, now: float) -> bool:
        """True when another instance called an election within the guard time."""
        return now - self.election_heard <= self.t.guard

    # -- inputs ------------------------------------------------------------------------

    def apply(self, item: Input) -> list[Action]:
        """Take one input another thread posted."""
        if isinstance(item, Heard):
            view = self.view
            if view is not None and (item.instance_id, item.epoch) == (view.leader_id, view.epoch):
                self.heard = item.at
            elif view is None or view.state != "live" or item.epoch > (view.epoch or 0):
                self.due = True  # a new leader: read its record once
        elif isinstance(item, ElectionCalled):
            self.election_heard = item.at
            self.stand_now = True
            self.due = True
        elif isinstance(item, Look):
            if item.forget:
                self.view = None
            self.due = True
        elif isinstance(item, Subscription):
            if item.held:
                # Messages sent while unsubscribed were lost, and a leader may have
                # pruned this instance from the managers meanwhile.
                self.register = True
                self.due = True
        elif isinstance(item, Appointed):
            self.appointed = (item.leader_id, item.epoch)
            logger.info("appointed to watch leader %s's liveness (epoch %s)", item.leader_id, item.epoch)
            return [WakeWatch()]
        elif isinstance(item, Draining):
            if not self.draining:
                self.draining = True
                logger.warning("draining (%s): standing in no election from now on", item.reason)
                if self.role != "follower":
                    return self.step_down("draining", release=True)
        elif isinstance(item, LeaderGone):
            view = self.view
            if view is None or (view.leader_id, view.epoch) == (item.leader_id, item.epoch):
                self.gone = f"{item.leader_id}:{item.epoch}"
                self.view = None
                self.due = True
        return []

    # -- one step ----------------------------------------------------------------------

    def decide(self, now: float, world: World) -> list[Action]:
        """The actions of one step: a leader renews; a follower listens, reads the
        record, stands or claims."""
        self.wake_in = self.t.heartbeat
        if self.role != "follower":
            return self._lead(world)
        listening = self._listening(now, world)
        return listening if listening is not None else self._look(now, world)

    def observe(self, now: float, world: World, query: Action, answer: object) -> list[Action]:
        """What follows from the answer to ``query``."""
        if isinstance(query, Confirm):
            if answer == (query.leader_id, query.epoch):
                self.wake_in = max(0.02, min(query.late, self.t.safety))
                return []
            return self._look(now, world)
        if isinstance(query, Read):
            assert isinstance(answer, LeaderView)
            return self._read(now, world, query, answer)
        if isinstance(query, Stand):
            member, top, closes_in = answer  # type: ignore[misc]
            return self._stood(query.at, member, top, closes_in)
        if isinstance(query, Claim):
            epoch, why = answer  # type: ignore[misc]
            return self._claimed(now, world, epoch, why)
        if isinstance(query, Beat):
            ok, why, replicated, heard = answer  # type: ignore[misc]
            return self._beaten(now, query, ok, why, replicated, heard)
        raise TypeError(f"not a query: {query!r}")

    def failed(self, now: float, action: Optional[Action], refused: bool) -> list[Action]:
        """The central Redis did not answer ``action`` (or refused it): a leader that
        cannot renew within the lease is no longer one (the record has expired by
        then)."""
        if isinstance(action, Read):
            self.register = self.register or action.register
        self.wake_in = self.REFUSED_RETRY_SECONDS if refused else min(self.t.heartbeat, 0.5)
        self.due = True
        if self.role != "follower" and now - self.last_beat > self.t.lease:
            return self.step_down("central Redis unreachable for a lease", release=False)
        return []

    def may_not_lead(self) -> None:
        """The central Redis user may not run what a leader runs: neither entered nor
        claimed (no epoch spent); others lead meanwhile."""
        self.candidate_since = None
        self.wake_in = self.REFUSED_RETRY_SECONDS

    def step_down(self, reason: str, release: bool) -> list[Action]:
        """Lead no more (nothing when this instance is a follower)."""
        role, epoch = self.role, self.epoch
        if role == "follower":
            return []
        self._follow()
        return [StepDown(reason, release, role, epoch)]

    def _follow(self) -> None:
        """A follower from now on; the record is read at the next step."""
        self.role, self.epoch, self.holding, self.due = "follower", None, False, True

    # -- a follower ----------------------------------------------------------------------

    def _listening(self, now: float, world: World) -> Optional[list[Action]]:
        """The actions while heartbeat messages stand in for reading the record (a
        Warden leader holds it, this instance hears the channel, nothing calls for a
        look); None when the record is to be read."""
        view = self.view
        if self.due or view is None or view.state != "live" or view.epoch is None or not world.subscribed:
            return None
        # A heartbeat more than two and a half periods late, or the safety net's period.
        late = self.heard + 2.5 * self.t.heartbeat - now
        safety = self.read_at + self.t.safety - now
        if late <= 0:
            logger.debug("leader %s's heartbeat is late: reading its record", view.leader_id)
            return None
        if safety <= 0:
            self.read_at = now
            return [Confirm(view.leader_id, view.epoch, late)]
        self.wake_in = max(0.02, min(late, safety))
        return []

    def _look(self, now: float, world: World) -> list[Action]:
        self.due = False
        standing = not self.draining and world.active(self.zone) and world.subscribed
        stand_now, self.stand_now = self.stand_now, False
        if standing and self.candidate_since is not None and now - self.candidate_since >= self.claim_after:
            # Claim time: the claim script judges the record itself (and lodges a stale
            # leader's kill), so there is nothing to read first.
            return self._campaign(now)
        if stand_now and standing and self.candidate_since is None:
            # An election was called: enter at once (an entry is harmless while a leader
            # lives, since no claim passes then); the record is read at claim time.
            return self._campaign(now)
        register, self.register = self.register, False
        return [Read(standing, self.gone, register, world.subscribed)]

    def _read(self, now: float, world: World, query: Read, view: LeaderView) -> list[Action]:
        actions: list[Action] = []
        if query.held and not view.heard:
            actions.append(Resubscribe())
        self.view, self.read_at = view, now
        if self.watches(view):
            actions.append(WakeWatch())
        if view.epoch is not None:
            self.highest_epoch = max(self.highest_epoch, view.epoch)
        if view.watcher and view.state == "live" and view.epoch is not None:
            self.appointed = (view.leader_id, view.epoch)
            actions.append(WakeWatch())
        if self.gone and self.gone != f"{view.leader_id}:{view.epoch}":
            self.gone = ""
        if view.leader_id == self.me and view.state == "live" and view.epoch is not None:
            # A record of mine that I do not know of: left from before a restart.
            return actions + [Release(view.epoch), Publish("election")]
        if view.state == "live":
            self.candidate_since = None
            if view.leader_id:
                actions.append(WatchZone(view.zone))
            if query.standing and view.zone and not world.active(view.zone):
                actions.append(KillLeader(view.leader_id, view.zone))
            limit = self.t.lease if view.epoch is not None else self.t.legacy_age
            if view.age_ms >= 0:
                # The heartbeat just read counts as heard; look again when the record
                # would go stale (sooner while heartbeats cannot be heard, and when the
                # next one would be late: _listening decides then).
                self.heard = now - view.age_ms / 1000
                stale_in = limit - view.age_ms / 1000 + 0.02
                # A Perl/Go leader publishes nothing: its record is read once a lease.
                cap = (self.t.heartbeat if not world.subscribed else
                       self.t.lease if view.epoch is None else
                       min(self.t.safety, 2.5 * self.t.heartbeat))
                self.wake_in = max(0.02, min(cap, stale_in))
            return actions
        if not query.standing:
            return actions
        if view.state == "stale":
            logger.warning("leader %s is stale (heartbeat %s ms old): kill lodged", view.leader_id, view.age_ms)
            # The first to find it says so; the others heard the election it called.
            if not self.election_called(now):
                actions.append(Publish("kill", instance_id=view.leader_id))
        return actions + self._campaign(now)

    def _campaign(self, now: float) -> list[Action]:
        # Looking again is due until this election ends.
        self.due = True
        # An entry older than guard + lease is dropped by the next claim (and one near
        # its key's expiry is about to vanish): stand again rather than wait on it.
        stale_after = min(max(self.t.guard + self.t.lease, self.claim_after + self.t.guard),
                          self.t.candidate_expiry * 0.8)
        if self.candidate_since is None or now - self.candidate_since > stale_after:
            return [Stand(now)]
        waited = now - self.candidate_since
        if waited < self.claim_after:
            self.wake_in = self.claim_after - waited
            return []
        return [Claim(self.zone, self.gone, self.highest_epoch)]

    def _stood(self, at: float, member: str, top: bool, closes_in: float) -> list[Action]:
        self.candidate_since = at
        # The highest entry claims when the election closes, a guard time after its
        # first entry, however late it entered itself. An entry below another live one
        # can win only once the entries above it are dropped (their candidates died):
        # it claims no earlier than that, so a fleet's election ends in a few claims,
        # not one per host.
        self.claim_after = closes_in if top else max(self.t.guard, self.t.drop)
        logger.info("standing for election as %s%s", member, "" if top else " (not the highest)")
        self.wake_in = self.claim_after
        # One call is enough: the others stand when they hear it.
        return [] if self.election_called(at) else [Publish("election")]

    def _claimed(self, now: float, world: World, epoch: Optional[int], why: str) -> list[Action]:
        if epoch is None:
            logger.debug("no claim: %s", why)
            if why == "not-highest" or why.startswith("leader-live"):
                # No live entry at all, mine included (it was dropped): stand again now.
                # Or someone leads: no longer a candidate; read its record and follow.
                self.candidate_since = None
                self.wake_in = 0.02
            else:
                self.wake_in = min(self.t.heartbeat, self.t.guard)
            return []
        self.role, self.epoch = "confirming", epoch
        self.waiting_said = False
        self.claimed_at = self.last_beat = now
        self.highest_epoch = max(self.highest_epoch, epoch)
        self.candidate_since = None
        logger.info("claimed leadership: epoch %s", epoch)
        # The claim wrote the first heartbeat; followers hear of it at once.
        return [Become("confirming", epoch), Publish("heartbeat", epoch)] + self._lead(world)

    # -- a leader ----------------------------------------------------------------------

    def _lead(self, world: World) -> list[Action]:
        epoch = self.epoch
        if epoch is None:
            return []
        if self.draining:
            # A drain noticed while the claim was in flight found a follower to step down.
            return self.step_down("draining", release=True)
        if not world.active(self.zone):
            return self.step_down("zone inactive", release=True)
        confirming = self.role == "confirming"
        # With minReplicasToAct, every beat waits for that many replicas; without, a
        # claim is confirmed once, when the primary has a replica to promote.
        want = self.t.min_replicas or (1 if confirming else 0)
        return [Beat(epoch, self.zone, want, self.t.confirm_ms, not self.t.min_replicas,
                     world.subscribed, confirming)]

    def _beaten(self, now: float, beat: Beat, ok: bool, why: str, replicated: bool,
                heard: bool) -> list[Action]:
        if not ok:
            return self.step_down(why, release=why == "killed")
        actions: list[Action] = [Resubscribe()] if beat.held and not heard else []
        self.last_beat = now
        actions.append(Publish("heartbeat", beat.epoch))
        if beat.confirming:
            if replicated:
                self.role = "leader"
                actions.append(Become("leader", beat.epoch))
            elif now - self.claimed_at > self.t.lease:
                # A replica attached that never acknowledges (a full resync, a stalled
                # replica) must not keep the record from everyone for ever.
                self._follow()
                actions.append(Abandon(beat.epoch))
            elif not self.waiting_said:
                self.waiting_said = True
                logger.warning("epoch %s is not on a replica yet: not acting until it is", beat.epoch)
        elif self.t.min_replicas and replicated == self.holding:
            self.holding = not replicated
            actions.append(Hold(self.holding, beat.epoch))
        return actions
