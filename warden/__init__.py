"""Warden keeps a container host's routes, load-balancer enrolment and task counts in
step with the containers that are really running."""

__version__ = "0.2.0"
