"""Runs every benchmark in turn and prints their tables (run by hand, after
scripts/setup.sh): .venv/bin/python scripts/bench/all.py

Each table prints its figure beside the reference measured in the same run (the bare
floor loop for routes and memory, the settings' bounds for failover)."""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = ["route_latency.py", "sweep_cost.py", "failover.py", "scaling_reaction.py",
              "rss.py", "manager_load.py", "fleet.py", "target_latency.py", "proxy_latency.py"]


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        print(f"\n##### {name}", flush=True)
        result = subprocess.run([sys.executable, os.path.join(HERE, name)], stderr=subprocess.DEVNULL)
        if result.returncode:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
