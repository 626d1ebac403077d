"""A watcher's look at the leader's liveness channel: each manager holds
``warden:alive:<instanceId>`` on its pub/sub connection, so the channel empties when
its process dies; the two followers a leader appoints read it a few times a second and
call an election when it stays empty."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import TYPE_CHECKING

import redis

from warden.manager.election import ALIVE_PREFIX
from warden.manager.machine import LeaderGone
from warden.runtime.threads import StoppableThread
from warden.subscribers.channels import ControlSubscriber

if TYPE_CHECKING:
    from warden.manager.manager import Manager

# The lines it logs are the Manager's, under the name they always had.
logger = logging.getLogger("warden.manager")


class LivenessWatch(StoppableThread):
    """A watcher's look at the leader's liveness channel: ``PUBSUB NUMSUB`` every
    ``interval`` seconds while the leader appointed this instance; no subscriber on two
    readings in a row (the second ``confirm`` seconds after the first) calls an
    election at once."""

    #: seconds between readings (two watchers: a reading every 0.125 s on average)
    interval = 0.25
    #: seconds before a zero reading is read again: a leader whose connection blipped
    #: resubscribes at once, well within this
    confirm = 0.05

    #: seconds between looks at whether this instance watches, while it does not (an
    #: appointment wakes it at once)
    idle = 2.0

    #: seconds this instance's own subscription must have been held, and its readings
    #: answered, before an empty channel counts. A central Redis that restarted or failed
    #: over dropped every subscription at once, the leader's with this one's, and the
    #: leader subscribes again within one reconnect backoff (at most 2 s) of the server
    #: being back, as this instance does.
    settle = ControlSubscriber.backoff_cap + 0.5

    def __init__(self, manager: "Manager") -> None:
        super().__init__("warden-liveness-watch")
        self.manager = manager
        #: set by an appointment (and by stop)
        self.wake = threading.Event()
        #: when this instance last lost its subscription, had it back, or a reading
        #: failed (monotonic)
        self.troubled_at = float("-inf")
        self._lost_once = False

    def subscription_changed(self, held: bool) -> None:
        """This instance's subscription was lost, or is back after a loss (not the first
        one at start): the leader's may be down too, for as long as a reconnect takes."""
        if not held or self._lost_once:
            self.troubled_at = time.monotonic()
        self._lost_once = self._lost_once or not held

    def on_stop(self) -> None:
        self.wake.set()

    def _subscribers(self, leader_id: str) -> int:
        """Subscribers of the leader's liveness channel on the server the commands
        reach, read together with this instance's own: a server that does not hold this
        instance's subscription either (a failover under way, the pub/sub connection
        still on the old primary) says nothing about the leader, and counts as trouble
        (``-1``)."""
        reply = self.manager.redis.pubsub_numsub(ALIVE_PREFIX + leader_id, self.manager.alive_channel)
        counts = [int(count) for _, count in reply] if reply else [0, 0]
        if len(counts) < 2 or counts[1] == 0:
            return -1
        return counts[0]

    def run(self) -> None:
        pause = self.interval
        while not self.stopping:
            self.wake.wait(pause)
            self.wake.clear()
            manager = self.manager
            view = manager.view
            if manager.role != "follower" or view is None or not manager.watches(view):
                pause = self.idle
                continue
            if pause == self.idle:
                # Just appointed, at the same moment as the other watcher: a random
                # phase, so that their readings interleave instead of coinciding.
                pause = random.uniform(0, self.interval)
                continue
            pause = self.interval
            # Lost: no judging until it has been back for the settle time (its return
            # sets troubled_at).
            if not manager.subscribed.is_set() or time.monotonic() - self.troubled_at < self.settle:
                continue
            try:
                first = self._subscribers(view.leader_id)
                second = 0 if first or self.stop_event.wait(self.confirm) else self._subscribers(view.leader_id)
            except redis.RedisError:
                first = second = -1
            if first < 0 or second < 0:
                self.troubled_at = time.monotonic()
                continue
            if first > 0 or second > 0 or self.stopping:
                continue
            if manager.view is view:
                logger.warning("leader %s's liveness channel has no subscriber on two readings: "
                               "its process is gone", view.leader_id)
                manager.post(LeaderGone(view.leader_id, view.epoch))
