"""What the logs say on an operator's day: a failure that repeats is logged once, then
with a count; JSON lines carry the fields a log search filters on; a normal handover
is not a warning."""

from __future__ import annotations

import json
import logging
import time

from conftest import RUN, RedisServer, eventually, ip_of
from warden.runtime.logs import Repeats


def test_a_repeating_failure_is_logged_once_then_with_a_count(caplog):
    repeats = Repeats(logging.getLogger("warden.test"), quiet_seconds=0.3)
    with caplog.at_level(logging.INFO, logger="warden.test"):
        for _ in range(5):
            repeats.failed("redis", logging.WARNING, "central Redis unreachable: %s", "refused")
        time.sleep(0.35)
        repeats.failed("redis", logging.WARNING, "central Redis unreachable: %s", "refused")
        repeats.failed("redis", logging.WARNING, "central Redis unreachable: %s", "refused")
        repeats.ended("redis", "central Redis reachable again")
        repeats.ended("redis", "central Redis reachable again")
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("WARNING", "central Redis unreachable: refused"),
        ("WARNING", "central Redis unreachable: refused (x5 in 0s)"),
        ("INFO", "central Redis reachable again (1 more failures since the last line)"),
    ]


def test_a_central_redis_outage_is_not_a_line_every_half_second(managers):
    own = RedisServer("central-outage")
    own.start()
    try:
        m = managers("i-alone", serviceManagementRedisAddress=f"127.0.0.1:{own.port}")
        own.stop()
        time.sleep(4)  # at the 0.5 s heartbeat, 8 lines used to be written by now
        log = m.log()
        assert log.count("central Redis unreachable") == 1, log
        assert log.count("control channels unreachable") == 1, log
        own.start()
        eventually(lambda: "central Redis reachable again (" in m.log(), 10, what="the end said")
        assert "more failures since the last line)" in m.log()
    finally:
        own.stop()


def test_a_normal_handover_on_shutdown_is_info(central, managers):
    m = managers("i-leaving")
    eventually(lambda: central.hget("service-manager", "id") == "i-leaving", 10, what="leading")
    assert m.stop() == 0
    [line] = [line for line in m.log().splitlines() if "leadership lost" in line]
    assert " INFO warden.manager: leadership lost (epoch " in line and line.endswith("): shutdown")


def test_json_lines_carry_service_container_change_and_epoch(redx, containers, warden, central,
                                                            central_server):
    w = warden([{"name": "web", "containerName": f"wt-{RUN}-web", "port": 8080,
                 "loadBalancerUrl": "web.example.com"}],
               serviceManagementRedisAddress=f"127.0.0.1:{central_server.port}", zoneCheck="none",
               leaseSeconds=2, guardTimeSeconds=0.5, heartbeatIntervalSeconds=0.5, handlers=["redx"])
    w.env.update(WARDEN_LOG_FORMAT="json", WARDEN_INSTANCE_ID="i-json")
    w.start("run", ready='"msg": "sweep (start-up)')
    c = containers.run("web")
    address = f"{ip_of(c)}:8080"
    eventually(lambda: address in redx.hgetall("backend:web"), 5, what="routed")
    eventually(lambda: central.hget("service-manager", "id") == "i-json", 10, what="leading")
    # The claim writes the record a moment before the leader says it gained leadership.
    eventually(lambda: "leadership gained" in w.log(), 5, what="leadership gained logged")
    entries = [json.loads(line) for line in w.log().splitlines() if line.startswith("{")]
    [change] = [e for e in entries if e.get("change") == f"+ backend:web {address}"]
    assert change["service"] == "web" and change["container"] == c.id[:12]
    [gained] = [e for e in entries if e["msg"].startswith("leadership gained")]
    assert gained["epoch"] == int(central.get("warden:epoch"))
