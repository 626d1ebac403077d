"""The election machine's transitions with the clock faked and the central Redis's
answers given by hand: what an instance does after a crash, a handover, a blip, a
stalled replica and a partition, and what it never does (act before a replica has its
claim, stand while draining, keep leading through a lease of silence)."""

from __future__ import annotations

from typing import Callable

from warden.manager.election import LeaderView
from warden.manager.machine import (Abandon, Beat, Become, Claim, Confirm, Draining, ElectionCalled,
                                    ElectionMachine, Heard, Hold, KillLeader, LeaderGone, Publish, Read, Release,
                                    Resubscribe, Stand, StepDown, Subscription, Timing, WakeWatch, WatchZone, World)

TIMING = Timing(heartbeat=1.0, lease=5.0, legacy_age=300.0, guard=1.0, safety=30.0, candidate_expiry=30.0,
                drop=7.0)


def world(subscribed: bool = True, inactive: tuple[str, ...] = ()) -> World:
    active: Callable[[str], bool] = lambda zone: zone not in inactive  # noqa: E731
    return World(subscribed, active)


def live(leader: str = "i-lead", epoch: int | None = 7, age_ms: int = 100, zone: str = "z",
         **kw: object) -> LeaderView:
    return LeaderView("live", leader, age_ms, zone, epoch, **kw)  # type: ignore[arg-type]


def kinds(actions: list) -> list[str]:
    return [type(a).__name__ for a in actions]


def leader_at(now: float = 10.0, timing: Timing = TIMING) -> ElectionMachine:
    """A machine that just won epoch 8 and had a replica confirm it."""
    m = ElectionMachine("i-me", "z", timing)
    m.candidate_since = now - 2
    m.claim_after = 1.0
    actions = m.decide(now, world())
    assert actions == [Claim("z", "", 0)]
    actions = m.observe(now, world(), actions[0], (8, ""))
    beat = actions[-1]
    assert isinstance(beat, Beat) and beat.confirming
    assert m.observe(now, world(), beat, (True, "", True, True)) == [Publish("heartbeat", 8), Become("leader", 8)]
    return m


def test_a_crashed_leader_found_stale_is_killed_then_the_follower_stands_claims_and_leads_once_replicated():
    m = ElectionMachine("i-me", "z", TIMING)
    first = m.decide(0.0, world())
    assert first == [Read(True, "", True, True)], "the first step reads the record and registers"
    stale = LeaderView("stale", "i-dead", 9000, "z", 7)
    actions = m.observe(0.1, world(), first[0], stale)
    assert actions == [Publish("kill", instance_id="i-dead"), Stand(0.1)]
    assert m.highest_epoch == 7
    assert m.observe(0.2, world(), actions[-1], ("100000:i-me", True, 1.0)) == [Publish("election")]
    assert (m.candidate_since, m.wake_in) == (0.1, 1.0)
    read = m.decide(0.6, world())
    assert read == [Read(True, "", False, True)], "a candidate reads the record while the election is open"
    assert m.observe(0.6, world(), read[0], stale) == [Publish("kill", instance_id="i-dead")]
    assert abs(m.wake_in - 0.5) < 1e-9, "and claims when the election closes"
    claim = m.decide(1.2, world())
    assert claim == [Claim("z", "", 7)], "claims above the highest epoch seen"
    actions = m.observe(1.3, world(), claim[0], (8, ""))
    assert kinds(actions) == ["Become", "Publish", "Beat"]
    assert actions[0] == Become("confirming", 8) and m.role == "confirming"
    beat = actions[-1]
    assert (beat.want, beat.confirming) == (1, True), "a claim waits for one replica"
    waiting = m.observe(1.4, world(), beat, (True, "", False, True))
    assert waiting == [Publish("heartbeat", 8)] and m.role == "confirming", "no acting before a replica has it"
    again = m.decide(2.4, world())
    assert kinds(again) == ["Beat"]
    assert m.observe(2.5, world(), again[0], (True, "", True, True)) == [Publish("heartbeat", 8),
                                                                          Become("leader", 8)]
    assert m.role == "leader" and m.epoch == 8
    assert m.decide(3.5, world())[0].confirming is False


def test_an_election_called_by_a_leader_handing_over_makes_a_follower_stand_at_once_without_reading():
    m = ElectionMachine("i-me", "z", TIMING)
    m.view, m.due, m.heard, m.read_at = live(), False, 5.0, 5.0
    m.apply(ElectionCalled(5.5))
    assert m.decide(5.6, world()) == [Stand(5.6)]
    assert m.observe(5.6, world(), Stand(5.6), ("1:i-me", True, 1.0)) == [], \
        "an election another called is not called again"


def test_a_follower_hearing_heartbeats_reads_nothing_until_one_is_late_and_the_safety_net_confirms():
    m = ElectionMachine("i-me", "z", TIMING)
    read = m.decide(0.0, world())[0]
    assert m.observe(0.0, world(), read, live(age_ms=0)) == [WatchZone("z")]
    assert m.decide(1.0, world()) == [] and m.wake_in == 1.5, "listening: wakes when a heartbeat would be late"
    m.apply(Heard("i-lead", 7, 2.0))
    assert m.decide(2.1, world()) == []
    assert kinds(m.decide(4.6, world())) == ["Read"], "a heartbeat 2.5 periods late: read the record"
    m.view, m.due, m.heard = live(), False, 31.0
    confirm = m.decide(31.5, world())
    assert confirm == [Confirm("i-lead", 7, 2.0)], "the safety net's period: one plain read"
    assert m.observe(31.5, world(), confirm[0], ("i-lead", 7)) == [] and m.wake_in == 2.0
    m.read_at = 0.0
    assert kinds(m.observe(31.6, world(), Confirm("i-lead", 7, 2.0), ("i-new", 8))) == ["Read"]


def test_a_blip_of_the_subscription_reads_the_record_and_registers_again():
    m = ElectionMachine("i-me", "z", TIMING)
    m.view, m.due, m.register, m.heard = live(), False, False, 10.0
    assert m.decide(10.5, world(subscribed=False)) == [Read(False, "", False, False)], \
        "not standing while the channels are lost"
    m.apply(Subscription(True))
    assert m.decide(10.6, world()) == [Read(True, "", True, True)]


def test_a_gone_leader_is_named_in_the_read_and_forgotten_once_another_leads():
    m = ElectionMachine("i-me", "z", TIMING)
    m.view = live()
    m.apply(LeaderGone("i-lead", 7))
    read = m.decide(1.0, world())
    assert read == [Read(True, "i-lead:7", True, True)]
    m.observe(1.0, world(), read[0], live("i-new", 8))
    assert m.gone == ""


def test_a_record_of_mine_from_before_a_restart_is_released_and_an_election_called():
    m = ElectionMachine("i-me", "z", TIMING)
    read = m.decide(0.0, world())[0]
    assert m.observe(0.0, world(), read, live("i-me", 4)) == [Release(4), Publish("election")]


def test_a_leader_in_an_inactive_zone_gets_a_kill_and_the_watcher_is_appointed_by_the_record():
    m = ElectionMachine("i-me", "z", TIMING)
    read = m.decide(0.0, world(inactive=("y",)))[0]
    actions = m.observe(0.0, world(inactive=("y",)), read, live(zone="y", watcher=True))
    assert actions == [WakeWatch(), WatchZone("y"), KillLeader("i-lead", "y")]
    assert m.appointed == ("i-lead", 7) and m.watches(m.view)


def test_the_liveness_reply_from_another_server_asks_to_subscribe_again():
    m = ElectionMachine("i-me", "z", TIMING)
    read = m.decide(0.0, world())[0]
    assert Resubscribe() in m.observe(0.0, world(), read, live(heard=False))


def test_a_stalled_replica_never_lets_a_claim_act_and_the_claim_is_handed_back_after_a_lease():
    m = ElectionMachine("i-me", "z", TIMING)
    m.candidate_since, m.claim_after = 0.0, 1.0
    beat = m.observe(1.0, world(), Claim("z", "", 0), (3, ""))[-1]
    for now in (2.0, 4.0, 6.0):
        assert m.observe(now, world(), beat, (True, "", False, True)) == [Publish("heartbeat", 3)]
        assert m.role == "confirming"
    assert m.observe(6.1, world(), beat, (True, "", False, True)) == [Publish("heartbeat", 3), Abandon(3)]
    assert (m.role, m.epoch, m.due) == ("follower", None, True)


def test_a_partitioned_leader_steps_down_after_a_lease_without_an_answer_and_keeps_the_record():
    m = leader_at(10.0)
    m.last_beat = 10.0
    assert m.failed(12.0, m.decide(12.0, world())[0], refused=False) == [], "within the lease it keeps leading"
    assert m.role == "leader" and m.wake_in == 0.5
    down = m.failed(15.5, m.decide(15.5, world())[0], refused=False)
    assert down == [StepDown("central Redis unreachable for a lease", False, "leader", 8)]
    assert m.role == "follower"


def test_a_killed_leader_releases_and_a_replaced_one_only_steps_down():
    m = leader_at()
    beat = m.decide(11.0, world())[0]
    assert m.observe(11.0, world(), beat, (False, "killed", False, True)) == [StepDown("killed", True, "leader", 8)]
    m = leader_at()
    beat = m.decide(11.0, world())[0]
    assert m.observe(11.0, world(), beat, (False, "not-mine", False, True)) == \
        [StepDown("not-mine", False, "leader", 8)]


def test_a_drain_or_an_inactive_zone_hands_the_leadership_back_and_a_draining_host_never_stands():
    m = leader_at()
    assert m.apply(Draining("spot")) == [StepDown("draining", True, "leader", 8)]
    m.view, m.candidate_since = LeaderView("none", "", -1, "", None), None
    m.due = True
    assert m.decide(20.0, world()) == [Read(False, "", True, True)]
    m.apply(ElectionCalled(20.0))
    assert kinds(m.decide(20.1, world())) == ["Read"], "an election called does not make it stand"
    m = leader_at()
    assert m.decide(11.0, world(inactive=("z",))) == [StepDown("zone inactive", True, "leader", 8)]


def test_a_leader_holds_while_too_few_replicas_acknowledge_and_acts_again_once_they_do():
    m = leader_at(timing=Timing(min_replicas=1))
    assert not m.holding
    beat = m.decide(11.0, world())[0]
    assert beat.want == 1
    assert m.observe(11.0, world(), beat, (True, "", False, True)) == [Publish("heartbeat", 8), Hold(True, 8)]
    assert m.observe(12.0, world(), beat, (True, "", False, True)) == [Publish("heartbeat", 8)], "said once"
    assert m.observe(13.0, world(), beat, (True, "", True, True)) == [Publish("heartbeat", 8), Hold(False, 8)]


def test_a_claim_refused_because_someone_leads_ends_the_candidacy():
    m = ElectionMachine("i-me", "z", TIMING)
    m.candidate_since, m.claim_after = 0.0, 1.0
    assert m.observe(1.0, world(), Claim("z", "", 0), (None, "leader-live i-other")) == []
    assert (m.candidate_since, m.wake_in, m.role) == (None, 0.02, "follower")
    m.candidate_since = 0.0
    assert m.observe(1.0, world(), Claim("z", "", 0), (None, "too-early")) == []
    assert m.candidate_since == 0.0 and m.wake_in == 1.0


def test_an_entry_below_another_waits_until_the_entries_above_it_would_be_dropped():
    m = ElectionMachine("i-me", "z", TIMING)
    assert m.observe(0.0, world(), Stand(0.0), ("1:i-me", False, 1.0)) == [Publish("election")]
    assert m.claim_after == 7.0 and m.wake_in == 7.0


def test_shutdown_hands_back_only_a_leadership_held():
    assert ElectionMachine("i-me", "z", TIMING).step_down("shutdown", release=True) == []
    assert leader_at().step_down("shutdown", release=True) == [StepDown("shutdown", True, "leader", 8)]


def test_a_central_redis_that_refuses_is_retried_slowly_and_a_failed_read_registers_again():
    m = ElectionMachine("i-me", "z", TIMING)
    read = m.decide(0.0, world())[0]
    assert m.register is False
    m.failed(0.1, read, refused=True)
    assert m.register and m.due and m.wake_in == ElectionMachine.REFUSED_RETRY_SECONDS
    m.may_not_lead()
    assert m.candidate_since is None
