"""The central Redis highly available: Warden's managers through Sentinel, a new leader
that acts only once a replica has its claim, and epochs that keep rising across a
failover that may lose the last writes."""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import signal
import statistics
import time
from typing import Any

import redis as redis_lib

from conftest import RedisServer, eventually
from warden.manager.election import ElectionStore

GUARD = 0.5


def holders(group) -> list:
    """The managers whose log says they lead now."""
    return [m for m in group if m.log().count("leadership gained: epoch") > m.log().count("leadership lost (epoch")]


def gains(group) -> list[tuple[float, int]]:
    """(Unix time, epoch) of every "leadership gained" in the managers' logs."""
    found = []
    for m in group:
        for stamp, epoch in re.findall(r"^(\S+ \S+) INFO warden\.manager: leadership gained: epoch (\d+)",
                                       m.log(), re.M):
            when = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found.append((when, int(epoch)))
    return sorted(found)


def test_epochs_rise_past_every_epoch_the_claimer_has_seen(central):
    """A promoted replica may have missed the last increment, and a Redis that lost its
    data starts again from its clock, which may not have moved past the last epoch: a
    claim never gives an epoch at or below one the claimer has seen."""
    a = ElectionStore(central, "i-a", 2.0, 300, GUARD, 30)
    a.enter(100)
    first, _ = a.claim("z")
    assert first
    # The replica that was promoted never got that increment (nor the record).
    central.set("warden:epoch", first - 1)
    central.delete("service-manager")
    b = ElectionStore(central, "i-b", 2.0, 300, GUARD, 30)
    b.enter(50)
    epoch, _ = b.claim("z", floor=first)
    assert epoch == first + 1
    # A Redis that lost everything within the same second.
    central.flushdb()
    c = ElectionStore(central, "i-c", 2.0, 300, GUARD, 30)
    c.enter(10)
    again, _ = c.claim("z", floor=epoch)
    assert again == epoch + 1


@contextlib.contextmanager
def stalled_replica() -> Any:
    """A central primary and its replica, in sync, then stalled (SIGSTOP: it stays
    attached but acknowledges nothing); yields (primary, replica, client of the
    primary's database 11). Both are stopped afterwards."""
    primary = RedisServer("central-primary")
    primary.start()
    replica = RedisServer("central-replica", "--replicaof", "127.0.0.1", str(primary.port))
    replica.start()
    client = redis_lib.Redis(port=primary.port, db=11, decode_responses=True)
    try:
        eventually(lambda: client.info("replication").get("slave0", {}).get("state") == "online", 10,
                   what="the replica in sync")
        replica.process.send_signal(signal.SIGSTOP)
        yield primary, replica, client
    finally:
        client.close()
        if replica.process is not None:
            replica.process.send_signal(signal.SIGCONT)
        replica.stop()
        primary.stop()


def test_a_new_leader_acts_only_once_a_replica_has_its_claim(managers, tmp_path):
    with stalled_replica() as (primary, replica, client):
        m = managers("i-a", serviceManagementRedisAddress=f"127.0.0.1:{primary.port}")
        eventually(lambda: "is not on a replica yet: not acting until it is" in m.log(), 10,
                   what="a claim waiting for the replica")
        assert client.hget("service-manager", "id") == "i-a", "it holds the record meanwhile"
        time.sleep(1)
        assert "leadership gained" not in m.log()
        replica.process.send_signal(signal.SIGCONT)
        eventually(lambda: "leadership gained" in m.log(), 10, what="acting once the replica has it")


def worker_service(ecs) -> dict:
    """A service scaled on moto's ECS from the Redis key ``demand:worker``."""
    return {"name": "worker", "port": 80, "taskName": ecs.task_family, "cluster": ecs.name,
            "metric": {"type": "redis", "key": "demand:worker"},
            "scaling": {"maxTasks": 10, "scaleDownDelaySeconds": 0},
            "runTask": {"launchType": "FARGATE", "networkConfiguration": ecs.awsvpc}}


def every_task(aws, ecs) -> list[dict]:
    """Every task of the test's family, stopped ones included."""
    found = []
    for status in ("RUNNING", "STOPPED"):
        arns = aws.ecs.list_tasks(cluster=ecs.name, family=ecs.task_family, desiredStatus=status)["taskArns"]
        for start in range(0, len(arns), 100):
            found += aws.ecs.describe_tasks(cluster=ecs.name, tasks=arns[start:start + 100],
                                            include=["TAGS"])["tasks"]
    return found


def test_a_primary_killed_while_the_leader_scales(sentinel_central, managers, aws, ecs, aws_proxy):
    """kill -9 of the central primary while the leader scales ECS, five times: Sentinel
    promotes the replica, every manager finds it, and afterwards one leader leads, under
    an epoch at least as high as every one before (higher whenever it is a new leader),
    and no RunTask or StopTask was made under an epoch older than the newest already
    gained. Prints the time from each kill to the first heartbeat on the new primary."""
    group_central = sentinel_central
    central = group_central.client()
    central.set("demand:worker", "3")
    services = [worker_service(ecs)]
    settings = dict(group_central.settings(), handlers=["ecs"], managerSleepTimeSeconds=1)
    group = []
    for n in range(3):
        m = managers(f"i-{n}", start=False, services=services, **settings)
        m.env["AWS_ENDPOINT_URL"] = aws_proxy.url
        m.start("manager")
        group.append(m)
    running = lambda: sum(1 for t in ecs.tasks() if t["startedBy"] == "warden")  # noqa: E731
    eventually(lambda: running() == 3, 30, what="the first scaling")

    gaps = []
    for trial, demand in enumerate((6, 2, 5, 3, 4)):
        before_leader = central.hget("service-manager", "id")
        before_epoch = max(e for _, e in gains(group))
        central.set("demand:worker", str(demand))  # the leader is scaling when the primary dies
        time.sleep(0.2)
        killed_wall = time.time()
        old = group_central.kill_primary()
        killed = time.monotonic()

        def first_heartbeat() -> bool:
            new = group_central.primary()
            if new is old:
                return False
            record = redis_lib.Redis(port=new.port, db=11, decode_responses=True,
                                     socket_timeout=0.5).hgetall("service-manager")
            beat = record.get("heartbeat", "")
            return bool(beat) and datetime.datetime.fromisoformat(beat.replace("Z", "+00:00")).timestamp() > killed_wall

        eventually(first_heartbeat, 30, interval=0.02, what=f"a heartbeat on the new primary (trial {trial})")
        gaps.append(time.monotonic() - killed)
        # The old primary comes back as the new one's replica, as an operator restarts it.
        group_central.restart_as_replica(old)
        group_central.wait_replicated()
        # A write the old primary had not passed on may be lost with it (and a primary
        # Sentinel demotes right after a failover is emptied by its resync): the demand
        # is published again, as whatever publishes it keeps doing, until it is met.
        eventually(lambda: central.set("demand:worker", str(demand)), 10, what="the new primary")

        def settled() -> bool:
            try:
                central.set("demand:worker", str(demand), nx=True)
            except redis_lib.RedisError:
                return False
            return len(holders(group)) == 1 and running() == demand

        try:
            eventually(settled, 30, what=f"one leader and {demand} tasks after failover {trial}")
        except AssertionError:
            for m in group:
                print(f"--- {m.env['WARDEN_INSTANCE_ID']} ---")
                print("\n".join(line for line in m.log().splitlines()
                                if "DEBUG" not in line or "claim" in line or "metric" in line)[-5000:])
            print("record", central.hgetall("service-manager"), "running", running(),
                  "holders", [m.env["WARDEN_INSTANCE_ID"] for m in holders(group)])
            raise
        now_leader = central.hget("service-manager", "id")
        now_epoch = int(central.hget("service-manager", "epoch"))
        assert now_epoch >= before_epoch
        if now_leader != before_leader or now_epoch != before_epoch:
            assert now_epoch > before_epoch, "a new leader's epoch is above every one before"
        assert holders(group)[0].env["WARDEN_INSTANCE_ID"] == now_leader

    timeline = gains(group)
    gained = {e for _, e in timeline}
    # What reached ECS, when (the proxy in front of moto saw each call) and under which
    # epoch (RunTask's tag, StopTask's reason).
    wall = time.time() - time.monotonic()
    actions = []
    for at, operation, body in aws_proxy.calls:
        if operation == "RunTask":
            tags = {t["key"]: t["value"] for t in json.loads(body).get("tags") or []}
            actions.append((at + wall, int(tags["warden:epoch"])))
        elif operation == "StopTask":
            actions.append((at + wall, int(re.match(r"warden epoch (\d+):", json.loads(body)["reason"]).group(1))))
    assert len(actions) > 5
    for when, epoch in actions:
        assert epoch in gained, "an action under an epoch no leader gained"
        # The fencing check runs right before each call: one call may be in flight.
        newer = [e for at, e in timeline if e > epoch and at < when - 1.0]
        assert not newer, f"an action at {when} under epoch {epoch} after epoch {newer[0]} was gained"
    # Read back from ECS: every task Warden started carries an epoch a leader gained, and
    # every task it stopped says which.
    for task in every_task(aws, ecs):
        if task.get("startedBy") == "warden":
            tags = {t["key"]: t["value"] for t in task.get("tags") or []}
            assert int(tags["warden:epoch"]) in gained
            if task.get("desiredStatus") == "STOPPED":
                assert int(re.match(r"warden epoch (\d+):", task["stoppedReason"]).group(1)) in gained
    print(f"\nSentinel failover, kill -9 of the primary -> first heartbeat on the new primary: "
          f"p50 {statistics.median(gaps):.2f} s, max {max(gaps):.2f} s over {len(gaps)} trials "
          f"({', '.join(f'{g:.2f}' for g in gaps)})")


def leading_on_a_long_lease(sentinel_central, managers) -> tuple[list, Any, str, str]:
    """Three managers under Sentinel with a lease (10 s) that outlasts a failover, once
    one leads and has appointed its two watchers: (managers, a client, leader, epoch)."""
    settings = dict(sentinel_central.settings(), leaseSeconds=10)
    group = [managers(f"i-{n}", **settings) for n in range(3)]
    central = sentinel_central.client()
    chief = eventually(lambda: central.hget("service-manager", "id"), 10, what="a leader")
    epoch = central.hget("service-manager", "epoch")
    eventually(lambda: central.scard("warden:watchers") == 2, 10, what="two watchers appointed")
    return group, central, chief, epoch


def subscribed_on(server: Any, seconds: float, what: str) -> None:
    """Until each of the three managers holds its pub/sub connection on ``server``."""
    client = redis_lib.Redis(port=server.port)
    names = {f"warden-sub-i-{n}" for n in range(3)}
    eventually(lambda: names <= {c["name"] for c in client.client_list()}, seconds, what=what)
    client.close()


def test_a_leader_whose_record_outlasts_a_failover_keeps_leading(sentinel_central, managers):
    """A central failover takes every subscription down at once, the leader's liveness
    channel with it. A watcher back on the new primary before the leader has subscribed
    again must not take that for the leader's death: a leader whose record survives the
    failover (its lease outlasts it) keeps leading under its epoch."""
    group, central, chief, epoch = leading_on_a_long_lease(sentinel_central, managers)
    for trial in range(3):
        sentinel_central.wait_replicated()
        old = sentinel_central.kill_primary()
        eventually(lambda: sentinel_central.primary() is not old, 30, what=f"failover {trial}")
        subscribed_on(sentinel_central.primary(), 15, f"every manager subscribed again after failover {trial}")
        time.sleep(1.5)  # several watcher readings on the new primary
        assert (central.hget("service-manager", "id"), central.hget("service-manager", "epoch")) == (chief, epoch)
        assert [m for m in group if "leadership lost" in m.log()] == []
        sentinel_central.restart_as_replica(old)


def test_a_primary_that_hangs_is_left_by_every_subscription(sentinel_central, managers):
    """A primary that stops answering but keeps its connections open (SIGSTOP, as a
    network partition looks) is failed over by Sentinel. A pub/sub connection left on
    it hears nothing any more, and the leader's liveness channel is empty on the new
    primary: each manager finds its own channel empty where its commands go and
    subscribes again there, so a leader whose record survived keeps leading."""
    group, _, chief, epoch = leading_on_a_long_lease(sentinel_central, managers)
    sentinel_central.wait_replicated()
    old = sentinel_central.primary()
    old.process.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        eventually(lambda: sentinel_central.primary() is not old, 30, what="the failover")
        primary = sentinel_central.primary()
        subscribed_on(primary, 8, "every manager subscribed on the new primary")
        print(f"\nA hung primary (SIGSTOP) -> every manager subscribed on the new primary: "
              f"{time.monotonic() - stopped:.2f} s")
        time.sleep(3)  # past the watchers' settle
        # (This test's own Sentinel client may still sit on the old primary: ask the new one.)
        new = redis_lib.Redis(port=primary.port, db=11, decode_responses=True)
        assert (new.hget("service-manager", "id"), new.hget("service-manager", "epoch")) == (chief, epoch)
        new.close()
        assert [m for m in group if "leadership lost" in m.log()] == []
    finally:
        old.process.send_signal(signal.SIGCONT)


def test_a_claim_no_replica_acknowledges_is_handed_back_within_the_lease(managers, webhook):
    """A replica that stays attached but never acknowledges (a full resync, a stalled
    replica; SIGSTOP here) kept a confirming leader renewing its record for ever: it
    never acted, and nobody else could claim. The claim is handed back after a lease,
    logged and alerted, and the election goes on; once the replica answers, one leads."""
    with stalled_replica() as (primary, replica, _):
        settings = dict(serviceManagementRedisAddress=f"127.0.0.1:{primary.port}",
                        alerts={"webhookUrl": webhook.url, "events": ["errors"]})
        group = [managers(f"i-{n}", **settings) for n in range(2)]
        handed = eventually(lambda: [m for m in group if "handed back: no replica acknowledged" in m.log()], 10,
                            what="a claim handed back")
        assert "leadership gained" not in handed[0].log()
        eventually(lambda: any(b["event"] == "claim-abandoned" for b in webhook.bodies), 10, what="the alert")
        # The election goes on: claims follow one another instead of one for ever.
        eventually(lambda: sum(m.log().count("claimed leadership") for m in group) >= 2, 10,
                   what="a second claim")
        replica.process.send_signal(signal.SIGCONT)
        eventually(lambda: len(holders(group)) == 1, 15, what="one leader once the replica acknowledges")


def test_a_leader_short_of_replicas_holds_every_ecs_call(sentinel_central, managers, ecs, aws_proxy):
    """Split brain: a primary cut off from its replica (and from the Sentinel majority)
    still answers some managers; a leader there must not act, since the replica may be
    promoted and elect another. Under Sentinel ``minReplicasToAct`` is 1: with the
    replica gone, the leader holds every ECS call, says why once (log, /readyz), and
    reaches the count once the replica is back."""
    from conftest import free_port, http_get

    central = sentinel_central.client()
    central.set("demand:worker", "2")
    services = [worker_service(ecs)]
    port = free_port()
    m = managers("i-0", start=False, services=services, handlers=["ecs"], managerSleepTimeSeconds=0.5,
                 metricsAddress=f"127.0.0.1:{port}", **sentinel_central.settings())
    m.env["AWS_ENDPOINT_URL"] = aws_proxy.url
    m.start("manager")
    running = lambda: sum(1 for t in ecs.tasks() if t["startedBy"] == "warden")  # noqa: E731
    eventually(lambda: running() == 2, 30, what="the first scaling")
    replica = next(s for s in sentinel_central.servers if s is not sentinel_central.primary())
    replica.stop()
    time.sleep(1.5)  # a few heartbeats
    calls = len(aws_proxy.made("RunTask"))
    central.set("demand:worker", "5")
    central.publish("warden:metric", "worker")
    time.sleep(3)
    assert len(aws_proxy.made("RunTask")) == calls and running() == 2, "a leader short of replicas acted"
    status, body = http_get(f"http://127.0.0.1:{port}/readyz")
    assert status == 503
    assert "fewer than 1 replicas acknowledge" in json.loads(body)["why"]["central-redis-replicas"]
    assert m.log().count("holding every action on the cluster") == 1, "said once"
    replica.start()
    sentinel_central.wait_replicated()
    eventually(lambda: running() == 5, 20, what="the count reached once the replica is back")
    assert "replicas acknowledge again: acting" in m.log()
