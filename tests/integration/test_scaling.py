"""Scaling: step tables and windows, every metric type against the moto server, the ECS
handler on moto's ECS, and managers that follow a metric and refuse a deposed epoch."""

from __future__ import annotations

import json
import signal
import time
import uuid

import pytest

from conftest import InProcessManager, eventually
from warden.config import Config
from warden.handlers.ecs import EcsHandler
from warden.manager.demand import MetricContext, MetricError, load_metric
from warden.policy import Policy, StepsSource, Window, desired
from warden.services import Service

STEPS = ((0, 1), (10, 2), (50, 5))


def test_steps_take_the_highest_threshold_reached_then_clamp():
    policy = Policy(steps=STEPS, min_tasks=0, max_tasks=4)
    assert [policy.wanted(v, STEPS) for v in (0, 9.9, 10, 49, 50, 1000)] == [1, 1, 2, 2, 4, 4]
    assert Policy(min_tasks=3).wanted(-5, ((0, 1),)) == 3, "below the lowest threshold: minTasks"
    assert Policy(max_tasks=9).wanted(3.2, ()) == 4, "no steps: the metric itself, rounded up"
    assert Policy(min_tasks=2, max_tasks=9).wanted(0, ()) == 2
    assert Policy().wanted(1e6, STEPS) == 5, "maxTasks defaults to the highest step's count"
    with pytest.raises(MetricError):
        Policy().wanted(3, ())


def test_scale_down_waits_out_the_window_and_the_last_sample_before_it_counts():
    policy = Policy(scale_down_delay=300)
    window = Window()
    window.add(0, 6)  # a new leader seeds the window with the running count
    assert desired(policy, 8, 6, window, 10) == 8, "up at once"
    assert desired(policy, 2, 8, window, 100) == 8, "down waits while 8 is in the window"
    # 8 was wanted from t=10 until t=100, so it stays in the window until t=400.
    assert desired(policy, 2, 8, window, 399) == 8
    assert desired(policy, 2, 8, window, 401) == 2, "8 left the window"
    # Passes further apart than the window: the sample just before it still counts.
    sparse = Window()
    sparse.add(0, 9)
    assert desired(policy, 1, 9, sparse, 1000) == 9
    assert desired(policy, 1, 9, sparse, 1400) == 1


def test_max_step_limits_each_pass():
    policy = Policy(max_step=3, scale_down_delay=0)
    assert desired(policy, 20, 2, Window(), 0) == 5
    assert desired(policy, 0, 10, Window(), 0) == 7


@pytest.fixture
def context(aws, central):
    return MetricContext(central, "us-east-1")


def read(spec, context):
    return load_metric(spec, context).read()


def test_static_and_redis_metrics(context, central):
    assert load_metric({"type": "static", "value": 7}, context).read() == 7
    metric = load_metric({"type": "redis", "key": "demand:web"}, context)
    with pytest.raises(MetricError, match="missing"):
        metric.read()
    central.set("demand:web", "not-a-number")
    with pytest.raises(MetricError, match="not a number"):
        metric.read()
    central.set("demand:web", "12.5")
    assert metric.read() == 12.5
    with pytest.raises(MetricError, match="unknown metric type 'nope'"):
        load_metric({"type": "nope"}, context)


def test_elastic_beanstalk_metric_counts_the_environments_instances(context, aws):
    app, env = f"app-{uuid.uuid4().hex[:6]}", f"env-{uuid.uuid4().hex[:6]}"
    aws.elasticbeanstalk.create_application(ApplicationName=app)
    aws.elasticbeanstalk.create_environment(ApplicationName=app, EnvironmentName=env)
    metric = load_metric({"type": "elasticbeanstalk", "environmentname": env}, context)
    assert metric.read() == 0
    image = aws.ec2.describe_images()["Images"][0]["ImageId"]
    aws.ec2.run_instances(ImageId=image, MinCount=3, MaxCount=3, TagSpecifications=[{
        "ResourceType": "instance",
        "Tags": [{"Key": "elasticbeanstalk:environment-name", "Value": env}]}])
    assert metric.read() == 3
    with pytest.raises(MetricError, match="does not exist"):
        load_metric({"type": "elasticbeanstalk", "environmentname": "no-such-env"}, context).read()


def test_cloudwatch_metric_reads_the_statistic(context, aws):
    namespace = f"Warden/{uuid.uuid4().hex[:6]}"
    metric = load_metric({"type": "cloudwatch", "namespace": namespace, "metricname": "Queue",
                          "dimensions": {"App": "web"}, "statistic": "Maximum",
                          "periodseconds": 300}, context)
    with pytest.raises(MetricError, match="no datapoints"):
        metric.read()
    aws.cloudwatch.put_metric_data(Namespace=namespace, MetricData=[
        {"MetricName": "Queue", "Dimensions": [{"Name": "App", "Value": "web"}], "Value": v}
        for v in (3, 17, 8)])
    assert metric.read() == 17


def test_sqs_metric_reads_the_queue_length(context, aws):
    url = aws.sqs.create_queue(QueueName=f"q-{uuid.uuid4().hex[:6]}")["QueueUrl"]
    metric = load_metric({"type": "sqs", "queueurl": url}, context)
    assert metric.read() == 0
    for n in range(4):
        aws.sqs.send_message(QueueUrl=url, MessageBody=str(n))
    assert metric.read() == 4


def test_steps_from_s3_and_from_a_file_are_read_again_when_they_change(aws, context, tmp_path):
    bucket = f"steps-{uuid.uuid4().hex[:6]}"
    aws.s3.create_bucket(Bucket=bucket)
    aws.s3.put_object(Bucket=bucket, Key="web.json", Body=b"[[0, 1], [10, 3]]")
    # Warden's own S3 client, as the Scaler makes it.
    source = StepsSource(lambda: context.aws("s3"), str(tmp_path))
    assert source.steps(f"s3://{bucket}/web.json") == ((0, 1), (10, 3))
    aws.s3.put_object(Bucket=bucket, Key="web.json", Body=b"[[0, 2], [5, 4]]")
    assert source.steps(f"s3://{bucket}/web.json") == ((0, 2), (5, 4))
    with pytest.raises(MetricError):
        source.steps(f"s3://{bucket}/missing.json")
    (tmp_path / "steps.json").write_text("[[0, 1]]")
    assert source.steps("steps.json") == ((0, 1),)
    time.sleep(0.01)
    (tmp_path / "steps.json").write_text("[[0, 1], [100, 9]]")
    assert source.steps("steps.json") == ((0, 1), (100, 9))
    (tmp_path / "steps.json").write_text("[[0, \"x\"]]")
    with pytest.raises(MetricError, match="list of"):
        source.steps("steps.json")


def service_for(ecs, **scaling) -> Service:
    from warden.services import MetricSpec, RunTask

    return Service("web", 80, task_name=ecs.task_family, cluster=ecs.name,
                   metric=MetricSpec("static", {"type": "static", "value": 0}),
                   scaling=Policy.from_spec({"scaledowndelayseconds": 0, "maxtasks": 30, **scaling}),
                   run_task=RunTask({"launchType": "FARGATE", "networkConfiguration": ecs.awsvpc}))


def config_for(tmp_path) -> Config:
    return Config(path=str(tmp_path / "config.json"), display_path="config.json", region="us-east-1")


def test_ecs_handler_starts_in_batches_of_ten_and_stops_newest_first(ecs, tmp_path):
    handler = EcsHandler(config_for(tmp_path))
    calls = []
    handler.mutating_client().meta.events.register("provide-client-params.ecs.RunTask",
                                          lambda params, **kw: calls.append(params["count"]))
    service = service_for(ecs)
    result = handler.on_scaling_pass(None, service=service, metric=23, steps=(), epoch=7,
                                     fence=lambda: True)
    assert (result.desired, result.running, result.started) == (23, 0, 23)
    assert calls == [10, 10, 3]
    tasks = ecs.tasks()
    assert len(tasks) == 23
    for task in tasks:
        tags = {t["key"]: t["value"] for t in task["tags"]}
        assert task["startedBy"] == "warden" and tags == {"warden:service": "web", "warden:epoch": "7"}
    before = {t["taskArn"] for t in tasks}
    result = handler.on_scaling_pass(None, service=service, metric=20, steps=(), epoch=7,
                                     fence=lambda: True)
    assert (result.running, result.stopped) == (23, 3)
    stopped = before - {t["taskArn"] for t in ecs.tasks()}
    # moto gives no createdAt: newest first falls back to the task ARN, highest first.
    assert stopped == set(sorted(before)[-3:])


def test_ecs_handler_counts_only_its_own_tasks_and_changes_nothing_when_fenced(ecs, tmp_path, aws):
    aws.ecs.run_task(cluster=ecs.name, taskDefinition=ecs.task_family, count=2, launchType="FARGATE",
                     networkConfiguration=ecs.awsvpc, startedBy="someone-else",
                     tags=[{"key": "warden:service", "value": "web"}])
    aws.ecs.run_task(cluster=ecs.name, taskDefinition=ecs.task_family, count=1, launchType="FARGATE",
                     networkConfiguration=ecs.awsvpc, startedBy="warden",
                     tags=[{"key": "warden:service", "value": "other"}])
    handler = EcsHandler(config_for(tmp_path))
    service = service_for(ecs)
    result = handler.on_scaling_pass(None, service=service, metric=4, steps=(), epoch=3,
                                     fence=lambda: False)
    assert result.refused and result.running == 0 and result.started == 0
    assert len(ecs.tasks()) == 3
    result = handler.on_scaling_pass(None, service=service, metric=4, steps=((0, 1), (3, 2)),
                                     epoch=3, fence=lambda: True)
    assert (result.desired, result.started) == (2, 2)
    assert len(ecs.tasks()) == 5


def test_a_wall_clock_step_neither_skips_nor_blocks_the_scale_down_window(ecs, tmp_path, monkeypatch):
    """The window is an interval: an NTP step forward must not scale down at once, nor a
    step back hold a scale-down past its delay. Only the wall clock steps here (the
    handler module's view of it): the monotonic clock goes on as it does under NTP."""
    import types

    import warden.handlers.ecs as ecs_module

    step = {"seconds": 0.0}
    clock = types.SimpleNamespace(time=lambda: time.time() + step["seconds"], monotonic=time.monotonic,
                                  sleep=time.sleep)
    monkeypatch.setattr(ecs_module, "time", clock)
    handler = EcsHandler(config_for(tmp_path))
    service = service_for(ecs, scaledowndelayseconds=300)
    assert handler.on_scaling_pass(None, service=service, metric=6, steps=(), epoch=7,
                                   fence=lambda: True).started == 6
    result = handler.on_scaling_pass(None, service=service, metric=1, steps=(), epoch=7, fence=lambda: True)
    assert (result.desired, result.stopped) == (6, 0)
    step["seconds"] = 3600.0
    result = handler.on_scaling_pass(None, service=service, metric=1, steps=(), epoch=7, fence=lambda: True)
    assert (result.desired, result.stopped) == (6, 0), "a step forward skipped the 300 s window"
    assert len(ecs.tasks()) == 6

    short = service_for(ecs, scaledowndelayseconds=1)
    handler = EcsHandler(config_for(tmp_path))
    step["seconds"] = 0.0
    handler.on_scaling_pass(None, service=short, metric=6, steps=(), epoch=7, fence=lambda: True)
    result = handler.on_scaling_pass(None, service=short, metric=1, steps=(), epoch=7, fence=lambda: True)
    assert (result.desired, result.stopped) == (6, 0)
    step["seconds"] = -3600.0
    time.sleep(1.2)
    result = handler.on_scaling_pass(None, service=short, metric=1, steps=(), epoch=7, fence=lambda: True)
    assert (result.desired, result.stopped) == (1, 5), "a step back held the scale-down past its 1 s window"
    assert len(ecs.tasks()) == 1


def web_service(ecs, **metric) -> dict:
    return {"name": "web", "port": 80, "taskName": ecs.task_family, "cluster": ecs.name,
            "metric": {"type": "redis", "key": "demand:web", **metric},
            "scaling": {"steps": [[0, 1], [10, 3], [50, 6]], "scaleDownDelaySeconds": 0},
            "runTask": {"launchType": "FARGATE", "networkConfiguration": ecs.awsvpc}}


def count_tasks(ecs) -> int:
    return sum(1 for t in ecs.tasks() if t["startedBy"] == "warden")


def test_managers_follow_a_redis_metric_nudged_on_warden_metric(ecs, central, managers, central_server):
    import redis as redis_lib

    central.set("demand:web", "0")
    group = [managers(f"i-{n}", services=[web_service(ecs)], managerSleepTimeSeconds=600,
                      handlers=["ecs"]) for n in range(3)]
    eventually(lambda: count_tasks(ecs) == 1, 15, what="the pass on gaining leadership")
    pub = redis_lib.Redis(port=central_server.port)
    central.set("demand:web", "12")
    pub.publish("warden:metric", "web")
    eventually(lambda: count_tasks(ecs) == 3, 5, what="scaled up after the nudge")
    central.set("demand:web", "60")
    pub.publish("warden:metric", json.dumps({"type": "metric", "service": "web"}))
    eventually(lambda: count_tasks(ecs) == 6, 5, what="scaled up again")
    central.set("demand:web", "0")
    pub.publish("warden:metric", "anything: every service")
    eventually(lambda: count_tasks(ecs) == 1, 5, what="scaled down")
    # An unreadable metric holds the count, whatever it was.
    central.set("demand:web", "garbage")
    pub.publish("warden:metric", "web")
    eventually(lambda: any("scaling web holds" in m.log() for m in group), 5, what="the pass holding")
    assert count_tasks(ecs) == 1
    pub.close()


def test_a_frozen_leader_that_wakes_cannot_scale(ecs, central, managers):
    central.set("demand:web", "0")
    group = [managers(f"i-{n}", services=[web_service(ecs)], managerSleepTimeSeconds=0.5,
                      handlers=["ecs"]) for n in range(2)]
    chief = eventually(lambda: central.hget("service-manager", "id"), 10, what="a leader")
    eventually(lambda: count_tasks(ecs) == 1, 15, what="the first pass")
    old_epoch = central.get("warden:epoch")
    frozen = next(m for m in group if m.env["WARDEN_INSTANCE_ID"] == chief)
    frozen.process.send_signal(signal.SIGSTOP)
    eventually(lambda: central.hget("service-manager", "id") not in (None, chief), 10,
               what="a new leader")
    central.set("demand:web", "12")
    eventually(lambda: count_tasks(ecs) == 3, 10, what="the new leader scales")
    frozen.process.send_signal(signal.SIGCONT)
    time.sleep(3)
    assert count_tasks(ecs) == 3, "the count stays what the new leader wants"
    epochs = {next(t["value"] for t in task["tags"] if t["key"] == "warden:epoch")
              for task in ecs.tasks() if task["startedBy"] == "warden"}
    new_tasks = [e for e in epochs if e != old_epoch]
    assert new_tasks and all(int(e) > int(old_epoch) for e in new_tasks)
    assert "leadership lost" in frozen.log()


# -- production conditions: the leader's scheduler and fencing, in process ---------------


def _scaler(leader, tmp_path, services: list, central):
    from warden.manager.scaler import Scaler
    from warden.services import ServiceCatalog

    (tmp_path / "services.json").write_text(json.dumps(services))
    catalog = ServiceCatalog(str(tmp_path / "services.json"), "services.json")
    catalog.load()
    return Scaler(leader.config, leader.manager.leadership, catalog, MetricContext(central, "us-east-1")), catalog


def _fargate_service(ecs, **fields) -> dict:
    return dict({"name": "web", "port": 80, "taskName": ecs.task_family, "cluster": ecs.name,
                 "metric": {"type": "static", "value": 3},
                 "scaling": {"maxTasks": 5, "scaleDownDelaySeconds": 0},
                 "runTask": {"launchType": "FARGATE", "networkConfiguration": ecs.awsvpc}}, **fields)


def test_a_pass_decided_under_one_epoch_never_acts_under_the_next(ecs, central, central_server, tmp_path):
    """Defect 8: the fence checked the manager's epoch at the time of the call, so a pass
    computed under epoch N acted once the same manager held N+1."""
    import threading

    leader = InProcessManager(tmp_path, central_server)
    scaler, catalog = _scaler(leader, tmp_path, [_fargate_service(ecs)], central)
    handler = EcsHandler(leader.config)
    handler.connect()
    reading, release = threading.Event(), threading.Event()

    class SlowMetric:
        def read(self):
            reading.set()
            release.wait(10)
            return 3.0

    try:
        first = leader.lead()
        [service] = catalog.services
        scaler._metrics["web"] = (repr(sorted(service.metric.items())), SlowMetric())
        passing = threading.Thread(target=scaler._pass, args=(service, "test"))
        passing.start()
        assert reading.wait(5)
        leader.hand_back()
        second = leader.lead()  # the same manager, leading again under a newer epoch
        assert second > first
        release.set()
        passing.join(10)
        assert ecs.tasks() == [], "a pass decided under the old epoch started tasks"
        assert leader.manager.fence(second) and not leader.manager.fence(first)
    finally:
        release.set()
        handler.disconnect()
        scaler._pool.shutdown()
        leader.close()


def test_the_scaler_outlives_a_failing_step_and_livez_names_a_dead_worker(ecs, central, central_server,
                                                                          tmp_path):
    """Defect 9: a step of the scheduler that raised (a catalog read mid-reload) ended
    its thread silently; now it logs and goes on, and /livez names any dead worker."""
    import urllib.error
    import urllib.request

    from conftest import free_port
    from warden.runtime.telemetry import Telemetry
    from warden.runtime.threads import StoppableThread

    leader = InProcessManager(tmp_path, central_server)
    scaler, catalog = _scaler(leader, tmp_path, [_fargate_service(ecs)], central)
    handler = EcsHandler(leader.config)
    handler.connect()
    snapshot = catalog.services
    failures = []

    class Flaky(type(catalog)):
        @property
        def services(self):
            if len(failures) < 3:
                failures.append(1)
                raise RuntimeError("dictionary changed size during iteration")
            return snapshot

    catalog.__class__ = Flaky
    try:
        leader.lead()
        scaler.start()
        eventually(lambda: len([t for t in ecs.tasks() if t["startedBy"] == "warden"]) == 3, 15,
                   what="a pass after the failing steps")
        assert scaler.is_alive() and len(failures) == 3
    finally:
        scaler.stop()
        scaler.join(10)
        handler.disconnect()
        leader.close()

    class Dies(StoppableThread):
        def run(self) -> None:
            return  # ends without being asked to, as a worker an uncaught bug ended

    telemetry = Telemetry(f"127.0.0.1:{free_port()}")
    dead = Dies("warden-doomed")
    telemetry.thread_check(dead)
    telemetry.thread_check(scaler)  # stopped on purpose: not a failure
    telemetry.start()
    try:
        dead.start()
        dead.join(5)
        url = f"http://127.0.0.1:{telemetry.address[1]}/livez"
        try:
            urllib.request.urlopen(url, timeout=2)
            raise AssertionError("livez answered 200 with a dead worker")
        except urllib.error.HTTPError as error:
            assert error.code == 503
            body = json.loads(error.read())
        assert body["threads"] == {"warden-doomed": False, "warden-scaler": True}
    finally:
        telemetry.stop()


def _behind(aws_proxy, managers, instance: str, services: list):
    """A `warden manager` scaling ``services``, its AWS calls through the proxy."""
    m = managers(instance, start=False, services=services, handlers=["ecs"], managerSleepTimeSeconds=600)
    m.env["AWS_ENDPOINT_URL"] = aws_proxy.url
    return m.start("manager")


def test_a_stalled_run_task_gives_up_in_seconds_with_one_fenced_retry(ecs, central, managers, aws_proxy):
    """Defect 13a: the ECS client retried up to 5 times with a 10 s read timeout, so a
    RunTask checked against the epoch could reach ECS a minute later."""
    aws_proxy.plan["RunTask"] = ["stall"] * 6
    m = _behind(aws_proxy, managers, "i-a", [_fargate_service(ecs)])
    eventually(lambda: aws_proxy.made("RunTask"), 15, what="the first RunTask")
    first = aws_proxy.made("RunTask")[0][0]
    eventually(lambda: "scaling web: ECS call failed" in m.log(), 15, what="the pass giving up")
    attempts = [t - first for t, _, _ in aws_proxy.made("RunTask")]
    assert len(attempts) == 2, attempts
    assert attempts[1] < 8, f"the retry came {attempts[1]:.1f}s after the first attempt"
    assert m.log().count("once more, fenced again") == 1


def test_warden_makes_its_aws_clients_from_one_session_one_at_a_time(aws, tmp_path):
    """Defect 13b: the parts made clients from boto3's default session on several
    threads at once (a known botocore race). Every part's client comes from
    warden.runtime.aws now: one session, created under a lock."""
    import threading

    from warden.runtime import aws as warden_aws
    from warden.handlers.elb import ElbHandler
    from warden.subscribers.zones import ZoneChecker

    config = config_for(tmp_path)
    errors = []
    for _ in range(5):
        warden_aws._session = None
        barrier = threading.Barrier(6)
        makers = [lambda: ElbHandler(config).client("elb"), lambda: ElbHandler(config).client("elbv2"),
                  lambda: EcsHandler(config).client(), lambda: EcsHandler(config).mutating_client(),
                  lambda: MetricContext(None, "us-east-1").aws("sqs"),
                  lambda: ZoneChecker("ec2", "us-east-1").lookup()]

        def make(maker):
            barrier.wait()
            try:
                maker()
            except Exception as error:  # noqa: BLE001 - what the test counts
                errors.append(repr(error))

        threads = [threading.Thread(target=make, args=(m,)) for m in makers]
        [t.start() for t in threads]
        [t.join() for t in threads]
        session = warden_aws._session
        assert session is not None and EcsHandler(config).client().meta.region_name == "us-east-1"
        assert warden_aws._session is session, "one session per process"
    assert errors == []


def test_a_leader_frozen_mid_pass_changes_nothing_when_it_wakes(ecs, central, central_server, managers,
                                                               aws_proxy):
    """Test gap 17: Manager.fence() refusing a real deposed process. The leader is
    frozen (SIGSTOP) while its pass waits on ListTasks; another takes over and scales;
    the old leader wakes with a stale count in hand. Read back unfiltered, every task
    carries the new leader's epoch."""
    central.set("demand:web", "0")
    aws_proxy.plan["ListTasks"] = ["hold"]
    a = _behind(aws_proxy, managers, "i-a", [web_service(ecs)])
    eventually(lambda: central.hget("service-manager", "id") == "i-a", 10, what="i-a leads")
    old_epoch = central.get("warden:epoch")
    b = managers("i-b", services=[web_service(ecs)], managerSleepTimeSeconds=600, handlers=["ecs"])
    assert aws_proxy.holding.wait(10), "i-a's pass reached ListTasks"
    a.process.send_signal(signal.SIGSTOP)
    aws_proxy.unhold.set()  # the reply waits in the frozen process's socket
    eventually(lambda: central.hget("service-manager", "id") == "i-b", 10, what="i-b took over")
    new_epoch = central.get("warden:epoch")
    import redis as redis_lib

    central.set("demand:web", "12")
    redis_lib.Redis(port=central_server.port).publish("warden:metric", "web")
    eventually(lambda: count_tasks(ecs) == 3, 10, what="i-b scales to 3")
    a.process.send_signal(signal.SIGCONT)
    eventually(lambda: "scaling web: fencing refused epoch" in a.log(), 10,
               what="i-a's pass refused by the fence")
    eventually(lambda: "leadership lost" in a.log(), 10, what="i-a stepped down")
    tasks = ecs.tasks()  # unfiltered: every task of the family, whoever started it
    epochs = [next(t["value"] for t in task["tags"] if t["key"] == "warden:epoch") for task in tasks]
    assert len(tasks) == 3 and set(epochs) == {new_epoch}, (epochs, old_epoch)
    assert [c for c in aws_proxy.calls if c[1] in ("RunTask", "StopTask")] == []
    assert "Traceback" not in a.log() + b.log()


def test_a_second_sigterm_exits_at_once_while_a_step_is_in_flight(ecs, central, managers, aws_proxy):
    """Test gap 19: the first SIGTERM waits for the scaling pass in flight (its RunTask
    stalls); a second exits at once with a non-zero code."""
    aws_proxy.plan["RunTask"] = ["stall"] * 4
    m = _behind(aws_proxy, managers, "i-a", [_fargate_service(ecs)])
    eventually(lambda: aws_proxy.made("RunTask"), 15, what="the RunTask in flight")
    m.process.send_signal(signal.SIGTERM)
    eventually(lambda: "SIGTERM: stopping" in m.log(), 5, what="the clean stop begun")
    assert m.process.poll() is None, "the first SIGTERM waits for the step in flight"
    m.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code = m.process.wait(5)
    assert code == 128 + signal.SIGTERM and time.monotonic() - started < 2
    assert "second SIGTERM: exiting now" in m.log()
    m.process = None
    m.log_file.close()


def test_scaling_failures_alert_when_they_start_and_when_they_end(ecs, central, managers, aws_proxy, webhook):
    """ECS failures of a scaling pass had no alert at all; now one when they start, one
    when they end."""
    received = webhook.bodies
    central.set("demand:web", "5")
    aws_proxy.mode = "503"
    m = managers("i-a", start=False, services=[web_service(ecs)], handlers=["ecs"],
                 managerSleepTimeSeconds=0.3, alerts={"webhookUrl": webhook.url, "events": ["errors"]})
    m.env["AWS_ENDPOINT_URL"] = aws_proxy.url
    m.start("manager")
    eventually(lambda: received, 30, what="the first alert")
    # Two more failing passes (each tries ListTasks as often as botocore retries).
    tried = len(aws_proxy.made("ListTasks"))
    eventually(lambda: m.log().count("scaling pass for web") >= 3 and len(aws_proxy.made("ListTasks")) > 2 * tried,
               30, what="more failing passes")
    assert [(a["event"], a["status"]) for a in received] == [("scaling-failed", "firing")]
    assert received[0]["text"].startswith("[warden i-a] web: scaling failed, an ECS call of the pass failed")
    aws_proxy.mode = "pass"
    eventually(lambda: len(received) == 2, 20, what="the resolved alert")
    assert (received[1]["event"], received[1]["status"], received[1]["key"]) == (
        "scaling-failed", "resolved", "warden:scaling-failed:web")


def test_sigterm_hands_leadership_back_first_and_exits_within_the_stop_deadline(ecs, central, managers, aws_proxy):
    """Shutdown waited for the scaler (join 60 s, behind a stalled RunTask) before the
    Manager handed leadership back, and the joins added up to minutes against ECS's
    stopTimeout. Leadership goes back first, within 2 s; the rest stops under one
    deadline (``stopTimeoutSeconds``), and what did not stop in time is named."""
    aws_proxy.plan["RunTask"] = ["stall"] * 4
    m = managers("i-a", start=False, services=[_fargate_service(ecs)], handlers=["ecs"],
                 managerSleepTimeSeconds=600, stopTimeoutSeconds=2)
    m.env["AWS_ENDPOINT_URL"] = aws_proxy.url
    m.start("manager")
    eventually(lambda: aws_proxy.made("RunTask"), 15, what="the RunTask in flight")
    m.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    eventually(lambda: central.hget("service-manager", "id") is None, 2, interval=0.02,
               what="the record handed back")
    released = time.monotonic() - started
    code = m.process.wait(10)
    took = time.monotonic() - started
    m.process = None
    m.log_file.close()
    print(f"\nSIGTERM with a RunTask stalled: record released after {released:.2f} s, exit {code} "
          f"after {took:.2f} s (stopTimeoutSeconds 2)")
    assert code == 0
    assert took < 2 + 1.0, f"exited {took:.2f} s after SIGTERM, past the 2 s deadline"
    assert "not stopped within stopTimeoutSeconds (2 s): warden-scaler" in m.log()


def test_a_signed_metric_nudge_needs_its_type_and_a_fresh_time(ecs, central, managers, central_server):
    """A signed ``warden:metric`` message needed no time, so it replayed for ever, and a
    signed message of another type (a heartbeat) was taken as a nudge for every service."""
    import redis as redis_lib

    from warden.control import sign

    secret = "s3cret-s3cret-s3cret"
    central.set("demand:web", "0")
    group = [managers(f"i-{n}", services=[web_service(ecs)], managerSleepTimeSeconds=600, handlers=["ecs"],
                      controlSecret=secret) for n in range(2)]
    eventually(lambda: count_tasks(ecs) == 1, 15, what="the pass on gaining leadership")
    pub = redis_lib.Redis(port=central_server.port)
    central.set("demand:web", "12")
    pub.publish("warden:metric", json.dumps(sign({"type": "metric", "service": "web"}, secret)))
    pub.publish("warden:metric", json.dumps(sign({"type": "heartbeat", "instanceId": "i-x", "az": "", "epoch": 0,
                                                  "ts": time.time(), "db": 11}, secret)))
    pub.publish("warden:metric", json.dumps(sign({"type": "metric", "service": "web", "ts": time.time() - 60,
                                                  "db": 11}, secret)))
    eventually(lambda: sum(m.log().count("ignored a message on warden:metric") for m in group) >= 6, 5,
               what="the three refused by both")
    time.sleep(1)
    assert count_tasks(ecs) == 1, "a nudge without a fresh time, or of another type, started a pass"
    log = "".join(m.log() for m in group)
    assert "warden:metric: bad_ts" in log and "warden:metric: wrong_type" in log and "warden:metric: stale_ts" in log
    pub.publish("warden:metric", json.dumps(sign({"type": "metric", "service": "web", "ts": time.time(),
                                                  "db": 11}, secret)))
    eventually(lambda: count_tasks(ecs) == 3, 5, what="a fresh signed nudge scales")
    pub.close()
