"""What other threads tell the Manager reaches its election machine only on its own
thread: they post, and it takes everything posted before its next decision. No Redis:
the Manager is built but never connects (only a follower's inputs are applied)."""

from __future__ import annotations

import dataclasses
import threading

from warden.config import Config, RedisAddress
from warden.manager.election import LeaderView
from warden.manager.machine import (Appointed, Draining, ElectionCalled, ElectionMachine, Heard, LeaderGone, Look,
                                    Subscription, Timing)
from warden.manager.manager import Manager
from warden.runtime.central import Central
from warden.subscribers.zones import ZoneChecker


def follower() -> Manager:
    config = dataclasses.replace(
        Config(path="/nonexistent/config.json", display_path="config.json", region="us-east-1"),
        instance_id="i-me", zone_check="none",
        service_management_redis=RedisAddress("redis://127.0.0.1:9", 11))
    return Manager(config, Central(config), ZoneChecker("none", None))


def posted_from_another_thread(manager: Manager, *items) -> None:
    thread = threading.Thread(target=lambda: [manager.post(i) for i in items])
    thread.start()
    thread.join()


def test_posts_change_nothing_until_the_managers_thread_takes_them():
    manager = follower()
    m = manager.machine
    m.view = LeaderView("live", "i-lead", 100, "z", 7)
    m.due = False
    posted_from_another_thread(manager, Heard("i-lead", 7, 123.0), ElectionCalled(124.0), Appointed("i-lead", 7),
                               Draining("spot"))
    assert (m.heard, m.stand_now, m.appointed, m.draining) == (0.0, False, None, False)
    manager._take()
    assert (m.heard, m.election_heard, m.stand_now, m.appointed, m.draining) == \
        (123.0, 124.0, True, ("i-lead", 7), True)
    assert m.due, "an election calls for a look"
    assert manager.watch.wake.is_set(), "an appointment wakes the liveness watch"


def machine() -> ElectionMachine:
    return ElectionMachine("i-me", "z", Timing())


def test_a_heartbeat_from_a_new_leader_or_epoch_calls_for_a_look_and_an_old_one_does_not():
    m = machine()
    m.view = LeaderView("live", "i-lead", 100, "z", 7)
    for item, due in ((Heard("i-lead", 7, 1.0), False), (Heard("i-old", 6, 1.0), False),
                      (Heard("i-new", 8, 1.0), True)):
        m.due = False
        assert m.apply(item) == []
        assert m.due is due, item


def test_a_gone_leader_is_marked_only_while_the_view_still_names_it():
    m = machine()
    m.view = LeaderView("live", "i-lead", 100, "z", 7)
    m.apply(LeaderGone("i-other", 3))
    assert m.gone == "" and m.view is not None
    m.apply(LeaderGone("i-lead", 7))
    assert m.gone == "i-lead:7" and m.view is None and m.due


def test_a_subscription_back_registers_again_and_looks_and_none_only_wakes():
    m = machine()
    m.register, m.due = False, False
    m.apply(Subscription(False))
    m.apply(None)
    assert (m.register, m.due) == (False, False)
    m.apply(Subscription(True))
    assert (m.register, m.due) == (True, True)
    m.view = LeaderView("live", "i-lead", 100, "z", 7)
    m.apply(Look(forget=True))
    assert m.view is None


def test_the_leadership_the_acting_parts_hold_refuses_without_asking_redis():
    """A follower, a leader held short of replicas, and an action decided under another
    epoch are refused before any call (the store is never reached)."""
    from warden.manager.manager import Leadership

    looks = []
    leadership = Leadership(store=None, look=lambda: looks.append(1))
    assert not leadership.fence() and leadership.current_epoch() is None
    assert leadership.set("leader", 7) == ("follower", None)
    assert leadership.is_leader and leadership.acting and leadership.current_epoch() == 7
    assert not leadership.fence(6), "decided under another epoch"
    leadership.held = "fewer than 1 replicas acknowledge"
    assert not leadership.acting and not leadership.fence(7)
    assert leadership.set("follower", None) == ("leader", 7)
    assert not leadership.is_leader and looks == []
