"""Assembling the long-running parts: subscribers, the Registrar and the handlers."""

from __future__ import annotations

import logging
from typing import Any

from warden import signals
from warden.config import Config
from warden.subscribers.docker import DockerEventReader, DockerSource
from warden.handlers import Handler
from warden.registrar import Registrar
from warden.services import ServiceCatalog
from warden.subscribers.watchers import RedxWatcher

logger = logging.getLogger(__name__)


class RegistrarDaemon:
    """``warden registrar``: the Docker events reader, the Registrar's worker, the
    Redx watcher and the handlers, started and stopped together."""

    def __init__(self, config: Config, catalog: ServiceCatalog, handlers: list[Handler],
                 docker_source: DockerSource) -> None:
        self.config = config
        self.catalog = catalog
        self.handlers = handlers
        self.docker = docker_source
        self.registrar = Registrar(config, docker_source, catalog)
        self.reader = DockerEventReader(docker_source, self.registrar.inbox)
        self.redx_watcher = RedxWatcher(config, lambda: self.registrar.probe_keys)

    def register(self, telemetry: Any) -> None:
        """Health checks and reconnect counters for ``/healthz`` and ``/metrics``."""
        for thread in [self.reader, self.registrar, self.redx_watcher,
                       *(t for h in self.handlers for t in h.threads())]:
            telemetry.thread_check(thread)
        telemetry.health_check("docker-events", self.reader.connected.is_set)
        telemetry.health_check("redx-redis", lambda: self.redx_watcher.reachable)
        telemetry.reconnect_source("docker-events", lambda: self.reader.reconnects)
        prober = self.registrar.prober
        telemetry.counter_source("warden_containers_reported_not_ready",
                                 "Containers whose readiness probe had no answer for "
                                 "readinessReportSeconds (each counted once)",
                                 lambda: prober.reported_total)
        telemetry.gauge_source("warden_containers_not_ready",
                               "Containers reported not ready and still unrouted",
                               lambda: len({p.container_id for p in prober.not_ready()}))

    def start(self) -> None:
        """Start everything; the first sweep waits for the events stream to open."""
        for handler in self.handlers:
            handler.connect()
            handler.start()
        self.reader.start()
        self.registrar.wait_before_first_sweep(self.reader.connected)
        self.registrar.start()
        self.redx_watcher.start()
        logger.info("registrar started: %d services, handlers %s",
                    len(self.registrar.services), ", ".join(h.name for h in self.handlers) or "none")

    def stop(self) -> None:
        """Stop the subscribers first, then let the Registrar finish its step, then the
        handlers."""
        self.redx_watcher.stop()
        self.reader.stop()
        self.registrar.stop()
        self.registrar.join(timeout=30)
        self.reader.join(timeout=5)
        self.redx_watcher.join(timeout=5)
        for handler in self.handlers:
            try:
                handler.stop()
            finally:
                handler.disconnect()
        logger.info("registrar stopped")


class ManagerDaemon:
    """``warden manager``: the zone checker, the control-channel subscriber, the
    Manager's election thread and the Scaler, started and stopped together."""

    def __init__(self, config: Config, catalog: ServiceCatalog, handlers: list[Handler]) -> None:
        from warden.control import METRIC_CHANNEL, ControlCodec
        from warden.manager import Manager, central_client
        from warden.metrics import MetricContext
        from warden.subscribers.channels import ControlSubscriber
        from warden.scaler import Scaler
        from warden.subscribers.zones import ZoneChecker

        self.config = config
        self.catalog = catalog
        self.handlers = handlers
        self.zones = ZoneChecker(config.zone_check, config.region)
        self.codec = ControlCodec(config.control_secret, config.lease_seconds)
        self.manager = Manager(config, central_client(config), self.zones)
        self.scaler = Scaler(config, self.manager, catalog, MetricContext(
            config.service_management_redis.client(socket_timeout=3, socket_connect_timeout=3),
            config.region), self.codec)
        from warden.subscribers.aws_events import AwsEventsConsumer

        self.consumer = (AwsEventsConsumer(config.aws_events_queue_url, config.region,
                                           lambda: self.manager.is_leader)
                         if config.aws_events_queue_url else None)
        self.subscriber = ControlSubscriber(
            lambda: config.service_management_redis.client(socket_connect_timeout=2,
                                                           health_check_interval=10),
            self.codec, extra={METRIC_CHANNEL: self.scaler.on_metric_message})

    def register(self, telemetry: Any) -> None:
        """Health checks and reconnect counters for ``/healthz`` and ``/metrics``."""
        for thread in [self.manager, self.manager.alive, self.manager.watch, self.scaler,
                       self.subscriber, self.zones, self.consumer,
                       *(t for h in self.handlers for t in h.threads())]:
            if thread is not None:
                telemetry.thread_check(thread)
        telemetry.health_check("control-channels", self.subscriber.connected.is_set)
        telemetry.reconnect_source("control-channels", lambda: self.subscriber.reconnects)

    def start(self) -> None:
        for handler in self.handlers:
            handler.connect()
            handler.start()
        self.zones.start()
        self.subscriber.start()
        self.scaler.start()
        self.manager.start()
        if self.consumer is not None:
            self.consumer.start()
        logger.info("manager started as %s in zone %s", self.config.instance_id,
                    self.config.availability_zone or "-")

    def stop(self) -> None:
        """Finish the scaling passes in flight, hand leadership back, stop listening."""
        if self.consumer is not None:
            self.consumer.stop()
            self.consumer.join(timeout=30)
        self.scaler.stop()
        self.scaler.join(timeout=60)
        self.manager.stop()
        self.manager.join(timeout=30)
        self.subscriber.stop()
        self.zones.stop()
        self.subscriber.join(timeout=5)
        self.zones.join(timeout=5)
        for handler in self.handlers:
            try:
                handler.stop()
            finally:
                handler.disconnect()
        logger.info("manager stopped")


class DrainDaemon:
    """This host's drain, once per process whatever the command: the drain watcher
    (the key, nudged by ``warden:drain``), this instance's own metadata notices on EC2,
    the record for ``warden status`` and the lifecycle action completed once drained.

    ``subscribe``: listen on ``warden:drain`` itself (``warden registrar``, which has no
    control-channel subscriber of its own). ``enrols``: some service names a load
    balancer, so a process running the ``elb`` handler enrols this host somewhere."""

    def __init__(self, config: Config, handlers: list[Handler], subscribe: bool, enrols: bool) -> None:
        from warden.subscribers.aws_events import MetadataNotices
        from warden.control import ControlCodec
        from warden.drain import DrainRecorder, DrainWatcher, LifecycleCompleter
        from warden.subscribers.channels import ControlSubscriber

        self.config = config
        elb_here = any(h.name == "elb" for h in handlers)
        self.watcher = DrainWatcher(config)
        self.completer = LifecycleCompleter(
            config, elb_here=elb_here,
            elb_elsewhere="elb" in config.handlers and enrols and not elb_here)
        self.recorder = DrainRecorder(config)
        self.receivers = signals.Receivers((signals.host_draining, self.recorder.on_host_draining))
        self.subscriber = (ControlSubscriber(
            lambda: config.service_management_redis.client(socket_connect_timeout=2,
                                                           health_check_interval=10),
            ControlCodec(config.control_secret, config.lease_seconds), channels=("warden:drain",))
            if subscribe else None)
        # Only on EC2 (metadata answered when the identity was resolved).
        self.notices = MetadataNotices() if config.on_ec2 else None
        self.threads = [t for t in (self.watcher, self.completer, self.subscriber, self.notices)
                        if t is not None]

    def register(self, telemetry: Any) -> None:
        """Health checks for ``/healthz``."""
        for thread in self.threads:
            telemetry.thread_check(thread)

    def start(self) -> None:
        if not self.config.instance_id:
            logger.info("this host's instanceId is unknown: it cannot be asked to drain")
            return
        self.receivers.connect()
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        for thread in self.threads:
            thread.stop()
        for thread in self.threads:
            if thread.ident is not None:
                thread.join(timeout=10)
        self.receivers.disconnect()
