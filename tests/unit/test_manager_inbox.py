"""What other threads tell the Manager reaches its election fields only on its own
thread: they post, and it takes everything posted before its next decision. No Redis:
the Manager is built but never connects (only a follower's inputs are applied)."""

from __future__ import annotations

import dataclasses
import threading

from warden.central import Central
from warden.config import Config, RedisAddress
from warden.election import LeaderView
from warden.manager import Appointed, Draining, ElectionCalled, Heard, LeaderGone, Look, Manager, Subscription
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
    m = follower()
    m.view = LeaderView("live", "i-lead", 100, "z", 7)
    m._due = False
    posted_from_another_thread(m, Heard("i-lead", 7, 123.0), ElectionCalled(124.0), Appointed("i-lead", 7),
                               Draining("spot"))
    assert (m.heard, m._stand_now, m.appointed, m.draining) == (0.0, False, None, False)
    m._take()
    assert (m.heard, m.election_heard, m._stand_now, m.appointed, m.draining) == \
        (123.0, 124.0, True, ("i-lead", 7), True)
    assert m._due, "an election calls for a look"


def test_a_heartbeat_from_a_new_leader_or_epoch_calls_for_a_look_and_an_old_one_does_not():
    m = follower()
    m.view = LeaderView("live", "i-lead", 100, "z", 7)
    for item, due in ((Heard("i-lead", 7, 1.0), False), (Heard("i-old", 6, 1.0), False),
                      (Heard("i-new", 8, 1.0), True)):
        m._due = False
        m.post(item)
        m._take()
        assert m._due is due, item


def test_a_gone_leader_is_marked_only_while_the_view_still_names_it():
    m = follower()
    m.view = LeaderView("live", "i-lead", 100, "z", 7)
    m.post(LeaderGone("i-other", 3))
    m._take()
    assert m.gone == "" and m.view is not None
    m.post(LeaderGone("i-lead", 7))
    m._take()
    assert m.gone == "i-lead:7" and m.view is None and m._due


def test_a_subscription_back_registers_again_and_looks_and_none_only_wakes():
    m = follower()
    m._register, m._due = False, False
    m.post(Subscription(False))
    m.post(None)
    m._take()
    assert (m._register, m._due) == (False, False)
    m.post(Subscription(True))
    m._take()
    assert (m._register, m._due) == (True, True)
    m.view = LeaderView("live", "i-lead", 100, "z", 7)
    m.post(Look(forget=True))
    m._take()
    assert m.view is None


def test_the_leadership_the_acting_parts_hold_refuses_without_asking_redis():
    """A follower, a leader held short of replicas, and an action decided under another
    epoch are refused before any call (the store is never reached)."""
    from warden.manager import Leadership

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
