"""What every part runs on: threads and their one Supervisor, logging, telemetry
(Prometheus), the central Redis connections, AWS clients and instance metadata. It
imports only from the ground floor (``warden.config``, ``warden.signals`` ...)."""
