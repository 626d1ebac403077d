"""Subscribers: each notices one kind of change outside Warden and turns it into typed
events and signals (see :mod:`warden.signals`); none writes a route or a task count.

- :mod:`~warden.subscribers.docker`: the Docker events stream (and Docker reads).
- :mod:`~warden.subscribers.channels`: the central Redis's control channels.
- :mod:`~warden.subscribers.watchers`: the service files, and the Redx Redis's health.
- :mod:`~warden.subscribers.aws_events`: EventBridge through SQS, and this instance's
  own notices in instance metadata.
- :mod:`~warden.subscribers.zones`: which availability zones are active.
"""
