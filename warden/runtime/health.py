"""The container image's health check: ``python -m warden.runtime.health``.

Asks ``/livez`` on the ``metricsAddress`` of the configuration in force (the config
file and the ``WARDEN_<KEY>`` variables, as ``warden run`` reads them): exit 0 when it
answers 200, 1 otherwise. Without a ``metricsAddress`` there is nothing to ask, and it
exits 0. ``/livez`` fails only when Warden is wedged (a dead thread, sweeps that
stopped), never for an outage of a Redis it depends on, so a restart is the cure.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from warden.config import load_config, parse_listen_address, resolve_config_path


def livez_url(address: str) -> str:
    """``http://HOST:PORT/livez`` for a ``metricsAddress`` (a wildcard host asks loopback)."""
    host, port = parse_listen_address(address)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}/livez" if ":" in host else f"http://{host}:{port}/livez"


def main() -> int:
    config, _ = load_config(resolve_config_path(None))
    if config is None or not config.metrics_address:
        return 0
    try:
        with urllib.request.urlopen(livez_url(config.metrics_address), timeout=3) as answer:
            return 0 if answer.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
