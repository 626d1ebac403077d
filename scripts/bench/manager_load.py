"""The Manager's load on the central Redis in the steady state: commands a second, by
command, from N `warden manager` processes (default 5), with default settings.

Run by hand (after scripts/setup.sh): .venv/bin/python scripts/bench/manager_load.py
It starts a redis-server of its own on a free loopback port, lets the managers settle,
then reads INFO commandstats twice, SECONDS apart (default 20).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import redis

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from local_services import start_redis  # noqa: E402


def main() -> int:
    count = int(os.environ.get("MANAGERS", "5"))
    seconds = float(os.environ.get("SECONDS_MEASURED", "20"))
    server, port = start_redis()
    r = redis.Redis(port=port, decode_responses=True)
    folder = tempfile.mkdtemp()
    config = os.path.join(folder, "config.json")
    with open(config, "w") as handle:
        json.dump({"serviceManagementRedisAddress": f"127.0.0.1:{port}", "zoneCheck": "none",
                   "region": "us-east-1", "handlers": []}, handle)
    processes = [subprocess.Popen(
        [sys.executable, "-m", "warden", "--config", config, "--log-level", "warning", "manager"],
        env=dict(os.environ, WARDEN_INSTANCE_ID=f"i-load-{n}", AWS_EC2_METADATA_DISABLED="true"), cwd=ROOT, stderr=subprocess.DEVNULL)
        for n in range(count)]
    try:
        time.sleep(5)
        before = r.info("commandstats")
        time.sleep(seconds)
        after = r.info("commandstats")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
        server.terminate()
    rows = []
    for name, stats in after.items():
        calls = stats["calls"] - before.get(name, {}).get("calls", 0)
        if calls and name not in ("cmdstat_info",):
            rows.append((calls / seconds, name.replace("cmdstat_", "")))
    total = sum(rate for rate, _ in rows)
    print(f"\nCentral Redis load from {count} managers (1 leader, {count - 1} followers), "
          f"steady state over {seconds:.0f} s")
    for rate, name in sorted(rows, reverse=True):
        print(f"  {name:<14} {rate:8.1f}/s")
    print(f"  {'total':<14} {total:8.1f}/s   ({total / count:.1f}/s per manager)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
