"""The one bounded admission in front of every collector, UDP, TCP and TLS alike.

A collector holds at most ``max_messages`` packets and ``max_bytes`` bytes: those waiting to
be sent, plus (TCP and TLS) those written whose acknowledgement has not come yet.  A packet
that does not fit is refused and counted as dropped, never an older one: what arrives is an
in-order prefix plus suffix of what was submitted, never reordered.  Live capture never waits
for room; reading a file may wait up to ``wait_for_room`` seconds, so that nothing is dropped
just for reading fast.  Once closing, every packet offered is dropped at shutdown.

Besides its packets the queue keeps what a collector's sender and its ``stats`` share: the
counts of packets held, in flight, sent and dropped, and the closing deadline, all under one
condition, which the sender also waits on for work.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from captagent_tls.sinks.hep.addresses import HepConfigError


@dataclass(frozen=True)
class QueueLimits:
    """How much one collector may hold (queued, plus written but not acknowledged)."""

    max_messages: int = 100_000
    max_bytes: int = 64 << 20
    # when full, wait this long for room before dropping: 0 for live capture, which must
    # never wait; reading a file may, so that nothing is dropped just for going fast
    wait_for_room: float = 0.0

    def __post_init__(self) -> None:
        if self.max_messages < 1 or self.max_bytes < 1:
            raise HepConfigError("HEP queue limits must be at least 1 message and 1 byte")


class PacketQueue:
    """Packets on their way to one collector, bounded by :class:`QueueLimits`.

    ``offer`` is the admission (the producer's side).  The sender ``take``\\ s batches; a
    packet taken is *in flight* until the sender ``settle``\\ s it (delivered, or dropped at
    shutdown) or ``put_back``\\ s it at the head to be sent again.  ``take(..., settle=True)``
    frees the room at once, for a sender (UDP) that cannot know more.  ``on_full`` is called
    (outside the lock) when the first packet of a run of drops is refused.
    """

    def __init__(
        self, limits: QueueLimits | None = None, on_full: Callable[[], None] | None = None
    ):
        self.limits = limits or QueueLimits()
        self.on_full = on_full
        self.cond = threading.Condition(threading.Lock())
        self.waiting: deque[bytes] = deque()
        self.held = 0  # waiting plus in flight
        self.held_bytes = 0
        self.in_flight = 0
        self.sent = 0  # settled as delivered
        self.dropped = 0  # refused: no room
        self.dropped_at_shutdown = 0  # offered once closing, settled undelivered, or left
        self.closing = False
        self.deadline = math.inf  # monotonic; set by close()
        self.finalized = False
        self._dropping = False  # the last packet offered was refused

    # -- the producer's side ---------------------------------------------------------------

    def offer(self, packet: bytes) -> bool:
        """Admit one packet; False when it was dropped (counted)."""
        size = len(packet)
        limits = self.limits
        with self.cond:
            if self.closing:
                self.dropped_at_shutdown += 1
                return False
            if (
                self.held < limits.max_messages
                and self.held_bytes + size <= limits.max_bytes
                or limits.wait_for_room
                and self._wait_for_room(size)
            ):
                self.waiting.append(packet)
                self.held += 1
                self.held_bytes += size
                self._dropping = False
                if len(self.waiting) == 1:
                    self.cond.notify_all()  # the sender waits for work
                return True
            if self.closing:  # began while waiting for room
                self.dropped_at_shutdown += 1
                return False
            self.dropped += 1
            first = not self._dropping
            self._dropping = True
        if first and self.on_full is not None:
            self.on_full()
        return False

    def _wait_for_room(self, size: int) -> bool:
        limits = self.limits

        def room() -> bool:
            return self.held < limits.max_messages and self.held_bytes + size <= limits.max_bytes

        self.cond.wait_for(lambda: self.closing or room(), limits.wait_for_room)
        return not self.closing and room()

    # -- the sender's side ----------------------------------------------------------------

    def wait_for_work(self, timeout: float | None = None) -> tuple[int, bool, float]:
        """Wait until a packet waits or closing began (at most ``timeout`` seconds, when
        given); then (packets waiting, closing, deadline)."""
        with self.cond:
            if not self.waiting and not self.closing:
                if timeout is None:
                    self.cond.wait_for(lambda: self.waiting or self.closing)
                else:
                    self.cond.wait(timeout)
            return len(self.waiting), self.closing, self.deadline

    def take(self, max_bytes: int | None = None, *, settle: bool = False) -> list[bytes]:
        """Packets from the head: all, or until ``max_bytes`` is reached (at least one).
        They are in flight, or with ``settle`` gone from the queue, their room free."""
        with self.cond:
            waiting = self.waiting
            if max_bytes is None:
                batch = list(waiting)
                waiting.clear()
                size = sum(map(len, batch)) if settle else 0
            else:
                batch = []
                size = 0
                while waiting and (size < max_bytes or not batch):
                    packet = waiting.popleft()
                    batch.append(packet)
                    size += len(packet)
            if settle:
                self.held -= len(batch)
                self.held_bytes -= size
                if batch:
                    self.cond.notify_all()  # room for an offer() that waits
            else:
                self.in_flight += len(batch)
        return batch

    def put_back(self, packets: list[bytes]) -> None:
        """In-flight packets to be sent again first, in their order."""
        with self.cond:
            self.in_flight -= len(packets)
            self.waiting.extendleft(reversed(packets))

    def settle(self, count: int, size: int, delivered: bool) -> None:
        """``count`` in-flight packets of ``size`` bytes are done: sent, or dropped at
        shutdown.  After :meth:`finalize` counted everything left, nothing more is counted."""
        with self.cond:
            self.in_flight -= count
            if self.finalized:
                return
            self.held -= count
            self.held_bytes -= size
            self.cond.notify_all()  # room for an offer() that waits
            if delivered:
                self.sent += count
            else:
                self.dropped_at_shutdown += count

    def past_deadline(self) -> bool:
        with self.cond:
            return time.monotonic() >= self.deadline

    def shutdown_deadline(self) -> float:
        """The closing deadline (monotonic), or infinity while not closing."""
        with self.cond:
            return self.deadline

    # -- closing --------------------------------------------------------------------------

    def close(self, deadline: float) -> None:
        """Refuse new packets; the sender delivers what is held until ``deadline``."""
        with self.cond:
            if self.closing:
                return
            self.closing = True
            self.deadline = deadline
            self.cond.notify_all()

    def finalize(self) -> int:
        """Count what is still held as dropped at shutdown, once; how many that was."""
        with self.cond:
            if self.finalized:
                return 0
            left = self.held
            self.dropped_at_shutdown += left
            self.held = self.held_bytes = 0
            self.waiting.clear()
            self.finalized = True
        return left
