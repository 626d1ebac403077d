"""Leader failover and handover times, with Warden's default settings (lease 5 s,
guard 1 s, heartbeat 1 s) unless overridden.

Run by hand (after scripts/setup.sh): .venv/bin/python scripts/bench/failover.py
It starts a redis-server of its own on a free loopback port and three `warden manager`
processes, then, TRIALS times each: kill -9 of the leader (crash failover), and SIGTERM
of the leader (graceful handover), each timed from the signal to the new leader's first
heartbeat in Redis (its claim writes it). The killed or stopped manager is started again
before the next trial.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import redis

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from local_services import start_redis  # noqa: E402


def main() -> int:
    trials = int(os.environ.get("TRIALS", "10"))
    settings = json.loads(os.environ.get("WARDEN_SETTINGS", "{}"))
    server, port = start_redis()
    r = redis.Redis(port=port, db=11, decode_responses=True)
    folder = tempfile.mkdtemp()
    config = os.path.join(folder, "config.json")
    with open(config, "w") as handle:
        json.dump({"serviceManagementRedisAddress": f"127.0.0.1:{port}", "zoneCheck": "none",
                   "region": "us-east-1", "handlers": [], **settings}, handle)
    processes: dict[str, subprocess.Popen] = {}

    def start(instance: str) -> None:
        env = dict(os.environ, WARDEN_INSTANCE_ID=instance, AWS_EC2_METADATA_DISABLED="true")
        processes[instance] = subprocess.Popen(
            [sys.executable, "-m", "warden", "--config", config, "--log-level", "warning", "manager"],
            env=env, cwd=ROOT, stderr=subprocess.DEVNULL)

    def wait_leader(not_this: str = "", timeout: float = 30) -> tuple[str, float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            who = r.hget("service-manager", "id")
            if who and who != not_this:
                return who, time.monotonic()
            time.sleep(0.005)
        raise SystemExit("no leader within 30 s")

    for n in range(3):
        start(f"i-bench-{n}")
    results: dict[str, list[float]] = {"crash (kill -9)": [], "handover (SIGTERM)": []}
    try:
        for kind, sig in (("crash (kill -9)", signal.SIGKILL), ("handover (SIGTERM)", signal.SIGTERM)):
            for _ in range(trials):
                chief, _ = wait_leader()
                time.sleep(1.5)  # let the followers settle into the steady state
                chief, _ = wait_leader()
                signalled = time.monotonic()
                processes[chief].send_signal(sig)
                _, seen = wait_leader(not_this=chief)
                results[kind].append(seen - signalled)
                processes[chief].wait(30)
                start(chief)
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(30)
        server.terminate()
    shown = {"leaseSeconds": 5, "guardTimeSeconds": 1, "heartbeatIntervalSeconds": 1, **settings}
    print(f"\nLeader failover, signal -> new leader's first heartbeat (s); settings {shown}")
    print(f"{'case':<20} {'n':>3} {'p50':>6} {'max':>6}")
    for kind, values in results.items():
        print(f"{kind:<20} {len(values):>3} {statistics.median(values):>6.2f} {max(values):>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
