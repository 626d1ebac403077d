"""The Supervisor: start order, hand-back first, sinks last, one deadline."""

from __future__ import annotations

import logging
import threading
import time

from warden.runtime.supervisor import Component, HandlerPart, LeaderPart, Step, Supervisor, ThreadPart
from warden.runtime.threads import StoppableThread


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.lock = threading.Lock()

    def add(self, event: str) -> None:
        with self.lock:
            self.events.append(event)


class Worker(StoppableThread):
    """Records when it runs and when it ends; ``stuck`` ignores a stop for that long."""

    def __init__(self, name: str, record: Recorder, stuck: float = 0.0) -> None:
        super().__init__(name)
        self.record, self.stuck = record, stuck
        self.watch = threading.Thread(name=f"{name}-watch")

    def run(self) -> None:
        self.record.add(f"run {self.name}")
        self.stop_event.wait()
        time.sleep(self.stuck)
        self.record.add(f"end {self.name}")


class FakeHandler:
    def __init__(self, record: Recorder) -> None:
        self.record = record

    def use_central(self, client) -> None:
        self.record.add("handler central")

    def connect(self) -> None:
        self.record.add("handler connect")

    def start(self) -> None:
        self.record.add("handler start")

    def stop(self) -> None:
        self.record.add("handler stop")

    def disconnect(self) -> None:
        self.record.add("handler disconnect")

    def threads(self):
        return []

    def register(self, telemetry) -> None:
        pass


class Central:
    commands = object()


def test_started_in_order_and_stopped_leader_first_then_newest_first_then_sinks(caplog):
    record = Recorder()
    leader, scaler = Worker("leader", record), Worker("scaler", record)
    supervisor = Supervisor([
        HandlerPart(FakeHandler(record), "manager", Central()),
        ThreadPart(scaler, "manager", before=lambda: record.add("before scaler")),
        LeaderPart(leader, "manager"),
        Step("manager", on_start=lambda: record.add("started"), on_stop=lambda: record.add("step stop")),
    ])
    supervisor.start()
    deadline = time.monotonic() + 5
    while len([e for e in record.events if e.startswith("run")]) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    with caplog.at_level(logging.INFO, logger="warden.supervisor"):
        assert supervisor.stop(5) == []
    starting = [e for e in record.events if not e.startswith(("run", "end", "step", "handler stop",
                                                              "handler disconnect"))]
    assert starting == ["handler central", "handler connect", "handler start", "before scaler", "started"]
    stopping = [e for e in record.events if e.startswith(("end", "step", "handler stop", "handler disconnect"))]
    assert stopping == ["end leader", "step stop", "end scaler", "handler stop", "handler disconnect"]
    assert caplog.messages == ["manager stopped"]


def test_a_part_stuck_past_the_deadline_is_named_and_holds_nothing_else():
    record = Recorder()
    stuck, quick = Worker("stuck", record, stuck=1.0), Worker("quick", record)
    supervisor = Supervisor([ThreadPart(quick, "x"), ThreadPart(stuck, "x")])
    supervisor.start()
    time.sleep(0.1)
    began = time.monotonic()
    assert supervisor.stop(0.3) == ["stuck"]
    assert time.monotonic() - began < 0.9
    assert "end quick" in record.events and "end stuck" not in record.events
    stuck.join(5)


def test_a_component_that_fails_to_start_leaves_the_started_ones_to_stop():
    record = Recorder()
    first = Worker("first", record)

    class Broken(Component):
        def start(self) -> None:
            raise RuntimeError("cannot start")

    supervisor = Supervisor([ThreadPart(first, ""), Broken()])
    try:
        supervisor.start()
    except RuntimeError:
        pass
    assert supervisor.stop(5) == []
    assert "end first" in record.events
