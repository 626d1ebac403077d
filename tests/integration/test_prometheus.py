"""The alerting rules Warden ships, ``deploy/prometheus/alerts.yml``: valid, and
behaving as their unit tests (``tests/integration/prometheus/alerts_test.yml``) say, by Debian's
``promtool``. That every metric they use is served is checked on a live ``/metrics``
in tests/integration/test_run.py."""

from __future__ import annotations

import json
import shutil
import subprocess

from conftest import ROOT

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"


def promtool(*args: str) -> subprocess.CompletedProcess:
    assert shutil.which("promtool"), "promtool is missing: run scripts/test, which installs Debian's prometheus"
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_the_alert_rules_are_valid():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_the_alert_rules_pass_their_unit_tests():
    result = promtool("test", "rules", "tests/integration/prometheus/alerts_test.yml")
    print(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_grafana_dashboards_queries_are_valid_promql(tmp_path):
    """Each panel's query, checked by promtool as a recording rule's expression."""
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "warden-dashboard.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(queries) >= len(dashboard["panels"]) > 0
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{n}", "expr": query} for n, query in enumerate(queries)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_process_that_never_sweeps_serves_no_sweep_time(managers):
    """A manager-only process served ``warden_last_sweep_timestamp_seconds 0``, so
    WardenSweepsStopped (``time() - ... > 300``) fired for it for ever."""
    from conftest import eventually, free_port, http_get

    port = free_port()
    managers("i-nosweep", metricsAddress=f"127.0.0.1:{port}")
    eventually(lambda: http_get(f"http://127.0.0.1:{port}/metrics")[0] == 200, 10, what="/metrics")
    metrics = http_get(f"http://127.0.0.1:{port}/metrics")[1]
    assert "warden_sweeps_total" in metrics, "the metrics are served"
    assert "warden_last_sweep_timestamp_seconds" not in metrics, "a sweep time for a process that never sweeps"
