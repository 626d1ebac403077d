"""The Manager: several ``warden manager`` processes electing one leader over a real
central Redis, with short lease (2 s) and guard (0.5 s) times."""

from __future__ import annotations

import datetime
import json
import signal
import time

import pytest
import redis as redis_lib

from conftest import eventually
from warden.control import encode
from warden.manager.election import ElectionStore

LEASE, GUARD = 2.0, 0.5


def leader(central) -> str:
    return central.hget("service-manager", "id") or ""


def by_id(instances, instance_id):
    return next(m for m in instances if m.env["WARDEN_INSTANCE_ID"] == instance_id)


def test_one_leader_heartbeats_and_the_others_follow(central, managers):
    group = [managers(f"i-{n}") for n in range(3)]
    chief = eventually(lambda: leader(central), 10, what="a leader")
    record = central.hgetall("service-manager")
    assert record["epoch"] == central.get("warden:epoch")
    assert record["subnet"] == "us-east-1a"
    first_beat = record["heartbeat"]
    eventually(lambda: central.hget("service-manager", "heartbeat") != first_beat, 3, what="heartbeats")
    time.sleep(1)
    assert leader(central) == chief
    gained = [m for m in group if "leadership gained" in m.log()]
    assert [m.env["WARDEN_INSTANCE_ID"] for m in gained] == [chief]
    assert 0 < central.pttl("service-manager") <= LEASE * 1000


def test_kill_9_of_the_leader_fails_over_within_lease_and_guard(central, managers):
    group = [managers(f"i-{n}") for n in range(3)]
    chief = eventually(lambda: leader(central), 10, what="a leader")
    epoch = int(central.get("warden:epoch"))
    victim = by_id(group, chief)
    victim.process.kill()
    killed_at = time.monotonic()
    successor = eventually(lambda: leader(central) not in ("", chief) and leader(central), 10,
                           what="a new leader")
    took = time.monotonic() - killed_at
    assert took < LEASE + GUARD + 1.5, f"failover took {took:.2f}s"
    assert int(central.hget("service-manager", "epoch")) > epoch
    victim.process.wait()
    victim.process = None
    victim.log_file.close()
    assert successor != chief


def test_a_paused_leader_that_wakes_never_acts_again(central, managers):
    group = [managers(f"i-{n}") for n in range(2)]
    chief = eventually(lambda: leader(central), 10, what="a leader")
    old_epoch = int(central.get("warden:epoch"))
    paused = by_id(group, chief)
    # The record names the claimant before its process has confirmed and acted; freeze
    # it only once it has taken up leadership, which is the case this test is about.
    eventually(lambda: "leadership gained" in paused.log(), 5, what="the leader to take up leadership")
    paused.process.send_signal(signal.SIGSTOP)
    successor = eventually(lambda: leader(central) not in ("", chief) and leader(central), 10,
                           what="a new leader while the old one is frozen")
    record = central.hgetall("service-manager")
    paused.process.send_signal(signal.SIGCONT)
    eventually(lambda: "leadership lost" in paused.log(), 5, what="the woken leader to step down")
    time.sleep(1.5)
    assert leader(central) == successor
    assert central.hget("service-manager", "epoch") == record["epoch"]
    assert int(record["epoch"]) > old_epoch
    # The woken instance cannot pass the fencing check with its old epoch.
    store = ElectionStore(central, chief, LEASE, 300, GUARD, 30)
    assert store.fence(old_epoch) != "ok"
    assert "leadership gained" not in paused.log().split("leadership lost")[-1]


def test_sigterm_hands_over_within_about_a_guard_time(central, managers):
    group = [managers(f"i-{n}") for n in range(3)]
    chief = eventually(lambda: leader(central), 10, what="a leader")
    leaving = by_id(group, chief)
    started = time.monotonic()
    assert leaving.stop() == 0
    successor = eventually(lambda: leader(central) not in ("", chief) and leader(central), 5,
                           what="a new leader", interval=0.02)
    took = time.monotonic() - started
    assert took < GUARD + 1.0, f"handover took {took:.2f}s"
    assert "leadership lost (epoch" in leaving.log() and "shutdown" in leaving.log()
    assert successor


def test_legacy_leader_is_respected_while_fresh_and_replaced_when_stale(central, managers):
    now = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    central.hset("service-manager", mapping={"id": "i-perl", "heartbeat": now, "subnet": "us-east-1b"})
    managers("i-1", legacyMaxHeartbeatAgeSeconds=60)
    managers("i-2", legacyMaxHeartbeatAgeSeconds=60)
    time.sleep(LEASE + GUARD + 1)
    assert leader(central) == "i-perl", "a fresh legacy leader keeps its place"
    central.hset("service-manager", "heartbeat", "20240101000000")
    eventually(lambda: leader(central) in ("i-1", "i-2"), 10, what="the stale legacy leader replaced")
    assert central.get("i-perl-kill") == "1"
    assert 0 < central.ttl("i-perl-kill") <= 86400


def test_go_rfc3339_legacy_heartbeat_is_read(central, managers):
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    central.hset("service-manager", mapping={"id": "i-go", "heartbeat": now, "subnet": "us-east-1b"})
    managers("i-1", legacyMaxHeartbeatAgeSeconds=4)
    time.sleep(1.5)
    assert leader(central) == "i-go"
    eventually(lambda: leader(central) == "i-1", 10, what="replaced once older than the legacy age")


def server_seconds(central) -> float:
    """Now, on the central Redis server's clock (the clock elections are judged by)."""
    seconds, micros = central.time()
    return seconds + micros / 1e6


def test_an_election_closes_a_guard_time_after_its_first_entry(central, managers):
    """An election opens with its first entry and closes guardTimeSeconds later (SPEC).
    In a fleet most candidates enter behind the one that found the leader gone, some
    of them well behind: the winner claims at that close, not a whole guard time after
    its own entry."""
    guard, legacy_age = 3.0, 6.0
    heartbeat = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(server_seconds(central)))
    central.hset("service-manager", mapping={"id": "i-go", "heartbeat": heartbeat, "subnet": "us-east-1a"})
    managers("i-late", guardTimeSeconds=guard, legacyMaxHeartbeatAgeSeconds=legacy_age)
    # An early candidate opens the election 1.5 s before i-late finds the record stale,
    # with the lowest roll (a tie goes to the member that sorts last: i-late's).
    stale_at = time.mktime(time.strptime(heartbeat, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone + legacy_age
    time.sleep(max(0.0, stale_at - 1.5 - server_seconds(central)))
    ElectionStore(central, "i-early", LEASE, legacy_age, guard, 30).enter(0)
    opened = server_seconds(central)
    eventually(lambda: leader(central) == "i-late", guard + legacy_age, what="i-late leads")
    beat = central.hget("service-manager", "heartbeat")
    claimed = datetime.datetime.fromisoformat(beat.replace("Z", "+00:00")).timestamp()
    # i-late entered about 1.5 s after the opening; a guard after its own entry would be
    # 4.5 s after it.
    assert claimed - opened < guard + 0.75, f"claimed {claimed - opened:.2f} s after the election opened"


def test_garbage_and_forged_messages_change_nothing(central, managers, central_server):
    secret = "s3cret-s3cret-s3cret"
    group = [managers(f"i-{n}", controlSecret=secret) for n in range(2)]
    chief = eventually(lambda: leader(central), 10, what="a leader")
    epoch = int(central.get("warden:epoch"))
    pub = redis_lib.Redis(port=central_server.port)
    garbage = [b"not json", b"\xff\xfe", b"[1,2]", b'{"type": "kill"}', b"x" * 1_000_000,
               json.dumps({"type": "kill", "instanceId": chief, "az": "", "epoch": "x", "ts": 1}).encode(),
               json.dumps({"type": "surprise", "instanceId": chief, "az": "", "epoch": 1, "ts": time.time()}).encode()]
    for channel in ("warden:kill", "warden:election", "warden:heartbeat", "warden:drain"):
        for payload in garbage:
            pub.publish(channel, payload)
    # Unsigned, wrongly signed, and replayed kills for the leader.
    pub.publish("warden:kill", encode("kill", chief, "", epoch, None))
    pub.publish("warden:kill", encode("kill", chief, "", epoch, "wrong-secret"))
    pub.publish("warden:kill", encode("kill", chief, "", epoch, secret, now=time.time() - 60))
    # Even a validly signed kill is only a nudge: with no kill key, the leader stays.
    pub.publish("warden:kill", encode("kill", chief, "", epoch, secret))
    time.sleep(1.5)
    assert leader(central) == chief
    assert int(central.get("warden:epoch")) == epoch
    for m in group:
        assert m.process.poll() is None
    log = by_id(group, chief).log()
    for reason in ("not_json", "not_utf8", "too_large", "unsigned", "bad_signature",
                   "stale_ts", "wrong_type", "bad_epoch"):
        assert f": {reason}" in log, reason
    pub.close()


def test_a_lodged_kill_makes_the_leader_step_down(central, managers, central_server):
    group = [managers(f"i-{n}") for n in range(2)]
    chief = eventually(lambda: leader(central), 10, what="a leader")
    # The record is written by the claim, a moment before the claimer acts: a kill in
    # between gives the claim up ("before acting"), which is not what this test asks.
    eventually(lambda: "leadership gained" in by_id(group, chief).log(), 5, what="the leader acting")
    central.set(f"{chief}-kill", "1")
    pub = redis_lib.Redis(port=central_server.port)
    pub.publish("warden:kill", encode("kill", chief, "", 0, None))
    eventually(lambda: "leadership lost" in by_id(group, chief).log(), 3, what="stepping down")
    eventually(lambda: leader(central) not in ("", chief) or central.get(f"{chief}-kill") is None, 5,
               what="kill key removed")
    eventually(lambda: leader(central) != "", 10, what="a leader again")
    pub.close()


def test_central_redis_restart_under_running_managers(central, managers, central_server):
    group = [managers(f"i-{n}") for n in range(3)]
    eventually(lambda: leader(central), 10, what="a leader")
    epoch = int(central.get("warden:epoch"))
    central_server.restart()
    client = redis_lib.Redis(port=central_server.port, db=11, decode_responses=True)
    eventually(lambda: client.hget("service-manager", "id"), 15, what="a leader after the restart")
    assert int(client.get("warden:epoch")) > epoch
    time.sleep(1)
    holders = [m for m in group if m.log().count("leadership gained: epoch") > m.log().count("leadership lost (epoch")]
    assert len(holders) == 1, [m.log()[-500:] for m in group]
    client.close()


def test_instance_in_an_inactive_zone_does_not_stand(central, managers, aws):
    # moto lists us-east-1a..f as available: a zone it does not list is not active.
    managers("i-lost", zoneCheck="ec2", availabilityZone="us-east-1z", region="us-east-1")
    time.sleep(LEASE + GUARD + 1)
    assert leader(central) == ""
    managers("i-ok", zoneCheck="ec2", availabilityZone="us-east-1a", region="us-east-1")
    eventually(lambda: leader(central) == "i-ok", 10, what="the instance in an active zone leads")


def test_fencing_refuses_a_deposed_epoch(central):
    a = ElectionStore(central, "i-a", LEASE, 300, GUARD, 30)
    b = ElectionStore(central, "i-b", LEASE, 300, GUARD, 30)
    a.enter(100)
    epoch_a, _ = a.claim("z")
    assert epoch_a and a.fence(epoch_a) == "ok"
    assert b.fence(epoch_a) == "not-mine"
    central.delete("service-manager")  # the lease ran out while a was frozen
    b.enter(50)
    epoch_b, _ = b.claim("z")
    assert epoch_b == epoch_a + 1
    assert a.fence(epoch_a) == "not-mine"
    assert a.heartbeat(epoch_a, "z")[:2] == (False, "not-mine")
    assert b.fence(epoch_b) == "ok"


def test_manager_without_instance_id_is_exit_2(central, managers):
    m = managers("i-x", start=False)
    del m.env["WARDEN_INSTANCE_ID"]
    result = m.command("manager")
    assert result.returncode == 2
    assert "instanceId" in result.stderr and "WARDEN_INSTANCE_ID" in result.stderr


def holders(group) -> list:
    """The managers whose log says they lead now."""
    return [m for m in group if m.log().count("leadership gained: epoch") > m.log().count("leadership lost (epoch")]


def test_kill_9_fails_over_by_liveness_long_before_the_lease(central, managers):
    group = [managers(f"i-{n}", leaseSeconds=5) for n in range(3)]
    chief = eventually(lambda: leader(central), 10, what="a leader")
    time.sleep(1)
    victim = by_id(group, chief)
    victim.process.kill()
    killed_at = time.monotonic()
    eventually(lambda: leader(central) not in ("", chief), 10, what="a new leader", interval=0.01)
    took = time.monotonic() - killed_at
    # Far below the 5 s lease; the room above guard + 0.3 s is for a busy machine.
    assert took < GUARD + 1.5, f"failover took {took:.2f}s with a 5 s lease"
    victim.process.wait()
    victim.process = None
    victim.log_file.close()
    assert central.get(f"{chief}-kill") == "1", "the dead leader's kill is lodged"


def test_a_cut_liveness_connection_never_gives_two_leaders(central, managers, central_server):
    group = [managers(f"i-{n}", leaseSeconds=5) for n in range(3)]
    chief = eventually(lambda: leader(central), 10, what="a leader")
    admin = redis_lib.Redis(port=central_server.port, decode_responses=True)
    victims = [c for c in admin.client_list() if c["name"] == f"warden-sub-{chief}"]
    assert len(victims) == 1
    admin.client_kill_filter(_id=victims[0]["id"])
    # A deposed leader notices at its next heartbeat (0.5 s here): two processes may
    # both say they lead for at most about that long, and only the record's holder can
    # pass the fencing check meanwhile.
    overlap, deadline = 0.0, time.monotonic() + 4
    while time.monotonic() < deadline:
        if len(holders(group)) > 1:
            overlap += 0.05
        time.sleep(0.05)
    assert overlap < 1.0
    now_leading = holders(group)
    assert len(now_leading) == 1
    assert now_leading[0].env["WARDEN_INSTANCE_ID"] == leader(central)
    # Whoever leads holds its liveness subscription again.
    assert admin.pubsub_numsub(f"warden:alive:{leader(central)}")[0][1] == 1
    admin.close()


def test_malformed_signatures_and_times_are_counted_never_raised(central, managers, central_server):
    """Defect 13: a non-ASCII sig, a 400-digit ts and ts NaN, on a control channel and on
    warden:metric, are rejected by reason; no traceback, nothing acted on."""
    import urllib.request

    from conftest import free_port
    from warden.control import sign

    secret = "s3cret-s3cret-s3cret"
    port = free_port()
    m = managers("i-0", controlSecret=secret, metricsAddress=f"127.0.0.1:{port}")
    eventually(lambda: leader(central) == "i-0", 10, what="i-0 leads")
    epoch = int(central.get("warden:epoch"))
    pub = redis_lib.Redis(port=central_server.port)
    base = {"type": "kill", "instanceId": "i-0", "az": "", "epoch": epoch}
    metric = {"type": "metric", "service": "web"}
    payloads = [
        ("warden:kill", json.dumps(dict(base, ts=time.time(), sig="é" * 64))),
        ("warden:metric", json.dumps(dict(metric, ts=time.time(), sig="é" * 64))),
        ("warden:kill", json.dumps(sign(dict(base, ts=10 ** 400), secret))),
        ("warden:metric", json.dumps(sign(dict(metric, ts=10 ** 400), secret))),
        ("warden:kill", json.dumps(sign(dict(base, ts=float("nan")), secret))),
        ("warden:metric", json.dumps(sign(dict(metric, ts=float("nan")), secret))),
    ]
    for channel, payload in payloads:
        pub.publish(channel, payload)
    pub.close()

    def rejected() -> dict:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        found = {}
        for line in text.splitlines():
            if line.startswith("warden_control_messages_rejected_total{"):
                found[line.split('reason="')[1].split('"')[0]] = float(line.split()[-1])
        return found

    eventually(lambda: rejected() == {"bad_signature": 2.0, "bad_ts": 4.0}, 5,
               what="every message rejected by reason")
    assert "Traceback" not in m.log()
    assert m.log().count("ignored a message on warden:") == 6
    assert leader(central) == "i-0" and int(central.get("warden:epoch")) == epoch


def test_liveness_blips_never_depose_a_healthy_leader(central, managers, central_server):
    """Defect 7: one empty reading of the leader's liveness channel used to lodge its
    kill; a connection that drops and comes back at once deposes nobody."""
    group = [managers(f"i-{n}", leaseSeconds=5) for n in range(3)]
    chief = eventually(lambda: leader(central), 10, what="a leader")
    epoch = central.get("warden:epoch")
    admin = redis_lib.Redis(port=central_server.port, decode_responses=True)
    for _ in range(20):
        victims = eventually(lambda: [c for c in admin.client_list()
                                      if c["name"] == f"warden-sub-{chief}"], 5,
                             what="the liveness connection back")
        admin.client_kill_filter(_id=victims[0]["id"])
        time.sleep(0.25)
    time.sleep(1)  # a deposed leader would see its kill at its next heartbeat (0.5 s)
    admin.close()
    assert leader(central) == chief and central.get("warden:epoch") == epoch
    assert central.get(f"{chief}-kill") is None
    assert "leadership lost" not in by_id(group, chief).log()
    assert by_id(group, chief).log().count("control channels lost") == 20


def test_one_empty_liveness_reading_is_not_a_dead_leader(central, central_server):
    """Defect 7: the check script used to count one empty reading of the leader's
    liveness channel as stale and lodge its kill. Only a follower's confirmation (two
    readings in a row, LivenessWatch) makes it so."""
    a = ElectionStore(central, "i-a", 5.0, 300, GUARD, 30)
    b = ElectionStore(central, "i-b", 5.0, 300, GUARD, 30)
    alive = redis_lib.Redis(port=central_server.port).pubsub()
    alive.subscribe("warden:alive:i-a")
    eventually(lambda: central.pubsub_numsub("warden:alive:i-a")[0][1] == 1, 2, what="subscribed")
    a.enter(100)
    epoch, _ = a.claim("z")
    assert epoch
    alive.unsubscribe("warden:alive:i-a")  # the blip: one reading finds the channel empty
    eventually(lambda: central.pubsub_numsub("warden:alive:i-a")[0][1] == 0, 2, what="the blip")
    view = b.check(standing=True)
    assert view.state == "live" and central.get("i-a-kill") is None
    b.enter(50)
    assert b.claim("z") == (None, "leader-live i-a")
    alive.subscribe("warden:alive:i-a")  # back within the confirm window
    eventually(lambda: central.pubsub_numsub("warden:alive:i-a")[0][1] == 1, 2, what="back")
    assert a.heartbeat(epoch, "z")[0]
    # Confirmed gone (two empty readings): stale, and the mark tells the other followers.
    alive.unsubscribe("warden:alive:i-a")
    eventually(lambda: central.pubsub_numsub("warden:alive:i-a")[0][1] == 0, 2, what="gone")
    assert b.check(standing=True, gone=f"i-a:{epoch}").state == "stale"
    assert central.get("i-a-kill") == "1"
    c = ElectionStore(central, "i-c", 5.0, 300, GUARD, 30)
    assert c.check(standing=False).state == "stale"
    alive.close()


def test_followers_hear_the_heartbeat_instead_of_reading_the_record(central, managers, central_server):
    """In the steady state a follower sends the central Redis nothing (only the two
    watchers the leader appoints read its liveness channel), and each manager holds
    two connections: one for commands, one for pub/sub."""
    group = [managers(f"i-{n}", managerSleepTimeSeconds=60) for n in range(5)]
    chief = eventually(lambda: leader(central), 10, what="a leader")
    time.sleep(2)  # every follower has read the new leader's record once
    admin = redis_lib.Redis(port=central_server.port, decode_responses=True)
    names = {c["addr"]: c["name"] for c in admin.client_list()}
    for m in group:
        me = m.env["WARDEN_INSTANCE_ID"]
        assert sorted(n for n in names.values() if n in (f"warden-{me}", f"warden-sub-{me}")) == \
            [f"warden-{me}", f"warden-sub-{me}"]
    watchers = set(central.smembers("warden:watchers"))
    assert len(watchers) == 2 and chief not in watchers
    counts: dict = {}
    last = ""
    deadline = time.monotonic() + 3
    with admin.monitor() as stream:
        for item in stream.listen():
            if time.monotonic() > deadline:
                break
            if item.get("client_type") != "lua":
                last = names.get(f"{item['client_address']}:{item['client_port']}", "?")
            name = last.removeprefix("warden-sub-").removeprefix("warden-")
            counts.setdefault(name, []).append(item["command"].split(" ")[0].lower())
    admin.close()
    for m in group:
        me = m.env["WARDEN_INSTANCE_ID"]
        sent = counts.get(me, [])
        if me == chief:
            assert sent.count("evalsha") >= 4, "the leader heartbeats twice a second"
        elif me in watchers:
            assert sent and set(sent) == {"pubsub"}, f"a watcher only reads the liveness channel: {sent}"
        else:
            assert sent == [], f"follower {me} sent {sent}"
    # The heartbeats still keep everyone following, and a crash is still seen at once.
    victim = by_id(group, chief)
    victim.process.kill()
    killed = time.monotonic()
    eventually(lambda: leader(central) not in ("", chief), 10, what="a new leader", interval=0.01)
    assert time.monotonic() - killed < GUARD + 1.5
    victim.process.wait()
    victim.process = None
    victim.log_file.close()


def test_a_daemon_says_at_start_what_validate_warns_of(central, managers):
    """A misspelt key used to start the daemon silently without the feature."""
    m = managers("i-typo", metricsAdress="127.0.0.1:9723")
    assert 'metricsAdress: unknown key, ignored; did you mean "metricsAddress"? (warning)' in m.log()


def heartbeat_age(central) -> float:
    beat = central.hget("service-manager", "heartbeat")
    if not beat:
        return float("inf")
    when = datetime.datetime.fromisoformat(beat.replace("Z", "+00:00")).timestamp()
    return server_seconds(central) - when


@pytest.mark.parametrize("open_ones", ["stay silent", "reset"])
def test_a_central_redis_that_goes_silent_is_left_for_a_fresh_connection(central, central_server, managers,
                                                                          tcp_proxy, open_ones):
    """A partition right after the handshake, or a hung primary still named: every
    connection through the proxy, and every one opened in the next 8 s, stays open and
    silent for ever. Without socket timeouts on the pub/sub connection, a (re)connect
    then blocked for good, ``stop`` could not reach the thread, and the leader was
    deposed by its watchers. Within a few seconds of the silence lifting for new
    connections, every manager is subscribed again, one leader heartbeats, and a stop
    ends each process in time throughout."""
    proxy = tcp_proxy(central_server.port)
    address = f"127.0.0.1:{proxy.port}"
    group = [managers(f"i-{n}", serviceManagementRedisAddress=address) for n in range(3)]
    eventually(lambda: leader(central), 10, what="a leader")
    ids = [f"i-{n}" for n in range(3)]

    def subscribed(who) -> bool:
        return all(count == 1 for _, count in central.pubsub_numsub(*[f"warden:alive:{i}" for i in who]))

    eventually(lambda: subscribed(ids), 10, what="every manager subscribed")
    proxy.black_hole(8, reset_open=open_ones == "reset")
    silenced_at = time.monotonic()
    time.sleep(4)
    stopping = group.pop()
    started = time.monotonic()
    assert stopping.stop() == 0
    stop_took = time.monotonic() - started
    assert stop_took < 6, f"a stop during the silence took {stop_took:.1f}s"
    time.sleep(max(0.0, 8 - (time.monotonic() - silenced_at)))
    back = eventually(lambda: subscribed(ids[:2]) and time.monotonic(), 8,
                      what="every manager subscribed again on a fresh connection")
    print(f"\nsilent for 8 s: every manager subscribed again {back - silenced_at - 8:.2f} s after")
    eventually(lambda: leader(central) in ids[:2] and heartbeat_age(central) < 1.0, 8, what="one leader heartbeating")
    chief = leader(central)
    time.sleep(2)
    assert leader(central) == chief and heartbeat_age(central) < 1.0
    for m in group:
        started = time.monotonic()
        assert m.stop() == 0
        assert time.monotonic() - started < 6


def test_a_control_secret_rotates_without_dropping_a_message(central, managers):
    """A rolling change of ``controlSecret``: every instance first verifies both (the
    old one still signing), then signs with the new one, then drops the old. Two
    managers midway, one signing old and one signing new, both verifying both: every
    control message is accepted, none rejected."""
    old, new = "old-secret-0123456789", "new-secret-0123456789"
    group = [managers("i-0", controlSecret=[old, new], managerSleepTimeSeconds=60),
             managers("i-1", controlSecret=[new, old], managerSleepTimeSeconds=60)]
    eventually(lambda: leader(central), 10, what="a leader")
    time.sleep(2)  # four heartbeats, signed with the leader's first secret, reach the other
    for m in group:
        assert "ignored a message" not in m.log(), m.log()[-2000:]


def test_two_clusters_on_one_redis_server_do_not_hear_each_other(central, managers, central_server):
    """Pub/sub ignores the database number: a cluster on database 12 with the same
    controlSecret and a higher epoch made every heartbeat of database 11's leader an
    ``old_epoch`` replay for its followers."""
    secret = "s3cret-s3cret-s3cret"
    ours = [managers(f"i-a{n}", controlSecret=secret) for n in range(2)]
    chief = eventually(lambda: leader(central), 10, what="our leader")
    theirs_db = redis_lib.Redis(port=central_server.port, db=12)
    theirs_db.flushdb()
    theirs_db.set("warden:epoch", 10 ** 12)
    theirs = [managers(f"i-b{n}", controlSecret=secret, serviceManagementRedisDatabaseNumber=12) for n in range(2)]
    eventually(lambda: theirs_db.hget("service-manager", "id"), 10, what="their leader")
    time.sleep(2)
    follower = next(m for m in ours if m.env["WARDEN_INSTANCE_ID"] != chief)
    assert "old_epoch" not in follower.log(), "another cluster's epoch made our leader's heartbeats replays"
    assert follower.log().count("WARNING warden.subscribers.channels: ignored a message on warden:heartbeat: "
                                "other_cluster") == 1, "said once"
    assert leader(central) == chief and theirs
    theirs_db.flushdb()
    theirs_db.close()
