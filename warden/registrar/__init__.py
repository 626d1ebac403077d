"""The Registrar: this host's containers, their routes and load-balancer enrolment,
kept in step with Docker's events (``registrar``), and the readiness probes that gate a
route (``readiness``)."""
