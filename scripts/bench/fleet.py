"""A fleet of managers on one central Redis: its steady-state load, connections and
crash failover, at sizes that do not fit as processes on one machine.

Run by hand (after scripts/setup.sh):
    .venv/bin/python scripts/bench/fleet.py --managers 200

N Managers run in this one process, each with what `warden manager` gives it: its own
command connection, its own pub/sub connection (control channels and its liveness
channel) and its own election thread and liveness watch. They share nothing but the
Redis server (each listens only to its own subscriber's signals). Default settings:
lease 5 s, guard 1 s, heartbeat 1 s.

- Load: over --seconds of steady state, every command the server ran, from INFO
  commandstats (which counts the commands inside scripts too), and who ran it, from
  MONITOR (a script's inner commands belong to the client that called it).
- Connections: the server's clients named after each manager.
- Failover: --trials times, a crash of the leader as `kill -9` looks to Redis (every
  connection of it closed at once, nothing handed back), alone and together with one
  of its watchers; timed from the crash to the new leader's first heartbeat (its claim
  writes it), both on the Redis server's clock, so this process's own delay in
  noticing is left out. The crashed managers are started again before the next trial.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import logging
import os
import random
import statistics
import sys
import threading
import time

import redis

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, ROOT)
from local_services import start_redis  # noqa: E402

from warden import signals  # noqa: E402
from warden.config import Config, RedisAddress  # noqa: E402
from warden.control import METRIC_CHANNEL, ControlCodec  # noqa: E402
from warden.manager.election import WATCHERS  # noqa: E402
from warden.manager.manager import Manager  # noqa: E402
from warden.runtime.central import Central  # noqa: E402
from warden.subscribers.channels import ControlSubscriber  # noqa: E402
from warden.subscribers.zones import ZoneChecker  # noqa: E402


class Member:
    """One manager of the fleet, as `warden manager` assembles it."""

    def __init__(self, config: Config) -> None:
        self.id = config.instance_id
        self.central = Central(config)
        self.manager = Manager(config, self.central, ZoneChecker("none", None))
        self.subscriber = ControlSubscriber(
            self.central.subscriber_client, ControlCodec(None, config.lease_seconds),
            extra={METRIC_CHANNEL: lambda data: None,
                   self.manager.alive_channel: self.manager.on_alive_message},
            connected=self.central.subscribed, resubscribe=self.central.resubscribe)
        for thread in (self.manager, self.manager.watch, self.subscriber):
            thread.name = f"{thread.name}-{self.id}"
        # Only this member's subscriber speaks to this member's Manager.
        self.manager.receivers = signals.Receivers(*self.manager.receivers.pairs, sender=self.subscriber)

    def start(self) -> None:
        self.manager.start()
        self.subscriber.start()

    def stop(self) -> None:
        self.manager.stop()
        self.subscriber.stop()

    def connections(self, clients: list[dict]) -> list[str]:
        """The ids of this member's connections among ``clients`` (CLIENT LIST)."""
        return [c["id"] for c in clients if c["name"] in (f"warden-{self.id}", f"warden-sub-{self.id}")]

    def crash(self, admin: redis.Redis, connections: list[str]) -> None:
        """What Redis sees of a `kill -9`: every connection closed at once, and nothing
        handed back."""
        self.manager.hand_back = lambda: None  # type: ignore[method-assign]
        self.manager.stop_event.set()
        self.manager.watch.stop_event.set()
        self.subscriber.stop_event.set()
        for connection in connections:
            admin.client_kill_filter(_id=connection)


def monitor(port: int, seconds: float, counts: dict[str, collections.Counter]) -> None:
    """Count the commands each client address ran for ``seconds``, a script's inner
    commands with the client that called it."""
    client = redis.Redis(port=port)
    deadline = time.monotonic() + seconds
    last = "?"
    with client.monitor() as stream:
        for item in stream.listen():
            if time.monotonic() > deadline:
                break
            command = item["command"].split(" ", 1)[0].lower()
            if item.get("client_type") == "lua":
                counts[last][command] += 1
            else:
                last = f"{item['client_address']}:{item['client_port']}"
                counts[last][command] += 1
    client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--managers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if os.environ.get("FLEET_LOG"):
        handler = logging.FileHandler(os.environ["FLEET_LOG"])
        handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("warden").addHandler(handler)
        logging.getLogger("warden").setLevel(logging.INFO)
        logging.getLogger("warden.manager").setLevel(logging.DEBUG)

    server, port = start_redis("--maxclients", "10000")
    admin = redis.Redis(port=port, decode_responses=True)
    admin.config_set("client-output-buffer-limit", "pubsub 0 0 0")

    def config(n: int) -> Config:
        return dataclasses.replace(
            Config(path="", display_path="fleet"), instance_id=f"i-fleet-{n:04d}",
            availability_zone="us-east-1a", region="us-east-1", zone_check="none", handlers=(),
            service_management_redis=RedisAddress(f"redis://127.0.0.1:{port}", 11))

    members = {}
    for n in range(args.managers):
        member = Member(config(n))
        members[member.id] = member
        member.start()

    central = redis.Redis(port=port, db=11, decode_responses=True)

    def wait_leader(not_these: tuple[str, ...] = (), timeout: float = 60) -> tuple[str, float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            who = central.hget("service-manager", "id")
            if who and who not in not_these:
                return who, time.monotonic()
            time.sleep(0.005)
        raise SystemExit(f"no leader within {timeout:.0f} s")

    try:
        chief, _ = wait_leader()
        # Settle: every follower has read the new record, the watchers are appointed.
        time.sleep(5 + args.managers * 0.02)
        names = {f"{c['addr']}": c["name"] for c in admin.client_list()}
        per_manager = collections.Counter(
            name.removeprefix("warden-sub-").removeprefix("warden-") for name in names.values()
            if name.startswith("warden-"))
        counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        admin.config_resetstat()
        watcher = threading.Thread(target=monitor, args=(port, args.seconds, counts))
        started = time.monotonic()
        watcher.start()
        watcher.join()
        elapsed = time.monotonic() - started
        stats = admin.info("commandstats")
        chief = central.hget("service-manager", "id")
        watchers = sorted(central.smembers(WATCHERS))

        by_role: dict[str, collections.Counter] = {"leader": collections.Counter(),
                                                   "followers": collections.Counter()}
        follower_totals = []
        for address, counter in counts.items():
            name = names.get(address, "")
            if not name.startswith("warden-"):
                continue
            member = name.removeprefix("warden-sub-").removeprefix("warden-")
            role = "leader" if member == chief else "followers"
            by_role[role].update(counter)
        for member_id in members:
            if member_id == chief:
                continue
            total = sum(sum(counter.values()) for address, counter in counts.items()
                        if names.get(address, "").endswith(member_id))
            follower_totals.append(total / elapsed)
        followers = args.managers - 1
        server_total = sum(v["calls"] for k, v in stats.items()
                           if k not in ("cmdstat_info", "cmdstat_monitor", "cmdstat_config"))
        print(f"\nFleet of {args.managers} managers on one central Redis (1 leader, {followers} "
              f"followers; watchers {', '.join(watchers)}), steady state over {elapsed:.0f} s")
        print(f"  all commands (INFO commandstats): {server_total / elapsed:.2f}/s")
        print(f"  leader: {sum(by_role['leader'].values()) / elapsed:.2f}/s")
        for command, calls in by_role["leader"].most_common():
            print(f"    {command:<14} {calls / elapsed:7.2f}/s")
        print(f"  per follower: mean {sum(follower_totals) / followers:.3f}/s, "
              f"max {max(follower_totals):.3f}/s (a watcher)")
        for command, calls in by_role["followers"].most_common():
            print(f"    {command:<14} {calls / elapsed / followers:7.3f}/s")
        print(f"  connections per manager: max {max(per_manager.values())}, "
              f"{sum(per_manager.values()) / len(per_manager):.2f} on average")

        results: dict[str, list[float]] = {"leader crash": [], "leader and a watcher crash": []}
        for case in results:
            for _ in range(args.trials):
                chief, _ = wait_leader()
                # At no fixed phase of the heartbeat or of the watchers' readings.
                time.sleep(3 + random.uniform(0, 1))
                watchers = sorted(central.smembers(WATCHERS))
                victims = [chief] + ([watchers[0]] if case != "leader crash" and watchers else [])
                logging.getLogger("warden.bench").info("crash of %s (%s)", victims, case)
                clients = admin.client_list()
                connections = {victim: members[victim].connections(clients) for victim in victims}
                seconds, micros = admin.time()
                crashed_at = seconds + micros / 1e6
                for victim in victims:
                    members[victim].crash(admin, connections[victim])
                wait_leader(not_these=(chief,))
                # The claim wrote the new leader's first heartbeat with the server's
                # clock, the clock the crash was read from: this process's own delays in
                # noticing do not count.
                beat = central.hget("service-manager", "heartbeat")
                claimed = datetime.datetime.fromisoformat(beat.replace("Z", "+00:00")).timestamp()
                results[case].append(claimed - crashed_at)
                for victim in victims:
                    old = members[victim]
                    old.manager.join(10)
                    old.subscriber.join(10)
                    old.central.close()
                    members[victim] = Member(config(int(victim.rsplit("-", 1)[1])))
                    members[victim].start()
        print("\n  crash failover, crash -> new leader's first heartbeat, server clock (s):")
        for case, values in results.items():
            print(f"    {case:<28} n={len(values)} p50 {statistics.median(values):.2f} "
                  f"max {max(values):.2f}  ({', '.join(f'{v:.2f}' for v in values)})")
    finally:
        for member in members.values():
            member.stop()
        for member in members.values():
            member.manager.join(10)
            member.subscriber.join(10)
        server.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
