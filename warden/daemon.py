"""Assembling the long-running parts: subscribers, the Registrar and the handlers."""

from __future__ import annotations

import logging
from typing import Any

from warden import signals
from warden.config import Config
from warden.docker_events import DockerEventReader, DockerSource
from warden.handlers import Handler
from warden.registrar import Registrar
from warden.services import ServiceCatalog
from warden.watchers import RedxWatcher, ServiceWatcher

logger = logging.getLogger(__name__)


class RegistrarDaemon:
    """``warden registrar``: the Docker events reader, the Registrar's worker, the
    service watcher, the Redx watcher and the handlers, started and stopped together."""

    def __init__(self, config: Config, catalog: ServiceCatalog, handlers: list[Handler],
                 docker_source: DockerSource) -> None:
        self.config = config
        self.handlers = handlers
        self.docker = docker_source
        self.registrar = Registrar(config, docker_source, catalog)
        self.reader = DockerEventReader(docker_source, self.registrar.inbox)
        self.service_watcher = ServiceWatcher(catalog, self.registrar)
        self.redx_watcher = RedxWatcher(config, lambda: self.registrar.probe_keys, self.registrar)
        self._receivers = [
            (signals.sweep_requested, self._on_sweep_requested),
            (signals.services_reloaded, self._on_services_reloaded),
        ]

    def _on_sweep_requested(self, sender: Any, *, reason: str, **kw: Any) -> None:
        self.registrar.submit("sweep", reason)

    def _on_services_reloaded(self, sender: Any, **kw: Any) -> None:
        self.registrar.submit("reload")

    def start(self) -> None:
        """Start everything; the first sweep waits for the events stream to open."""
        for handler in self.handlers:
            handler.connect()
            handler.start()
        for signal, receiver in self._receivers:
            signal.connect(receiver, weak=False)
        self.reader.start()
        self.registrar.wait_before_first_sweep(self.reader.connected)
        self.registrar.start()
        self.service_watcher.start()
        self.redx_watcher.start()
        logger.info("registrar started: %d services, handlers %s",
                    len(self.registrar.services), ", ".join(h.name for h in self.handlers) or "none")

    def stop(self) -> None:
        """Stop the subscribers first, then let the Registrar finish its step, then the
        handlers."""
        self.service_watcher.stop()
        self.redx_watcher.stop()
        self.reader.stop()
        self.registrar.stop()
        self.registrar.join(timeout=30)
        self.reader.join(timeout=5)
        self.redx_watcher.join(timeout=5)
        for signal, receiver in self._receivers:
            signal.disconnect(receiver)
        for handler in self.handlers:
            try:
                handler.stop()
            finally:
                handler.disconnect()
        logger.info("registrar stopped")
