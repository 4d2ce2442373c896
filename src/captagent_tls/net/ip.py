"""IP defragmentation (IPv4 and IPv6), bounded in datagrams, bytes and time.

Big SIP INVITEs over UDP fragment; TCP segments seldom do, but they go through here too.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from captagent_tls.counters import Counters
from captagent_tls.net.packet import Datagram, Fragment, Segment, Skip, transport

MAX_DATAGRAM = 65535 + 40
# the pieces of one datagram never hold more than a datagram can carry: overlapping pieces
# that would are dropped with their datagram
MAX_PIECES_BYTES = MAX_DATAGRAM
MAX_HELD_BYTES = 16 << 20  # all datagrams waiting for pieces together


@dataclass
class DefragStats:
    fragments: int = 0
    reassembled: int = 0
    expired: int = 0
    overflows: int = 0

    def add_counters(self, counters: Counters) -> None:
        for outcome in ("fragments", "reassembled", "expired", "overflows"):
            counters.set("ip_fragments", getattr(self, outcome), outcome)


class _Pending:
    __slots__ = ("pieces", "total", "size", "first_ts")

    def __init__(self, ts: int):
        self.pieces: dict[int, bytes] = {}
        self.total = -1  # known once the last fragment arrives
        self.size = 0
        self.first_ts = ts


class Defragmenter:
    def __init__(
        self,
        max_datagrams: int = 4096,
        timeout_s: float = 30.0,
        max_held_bytes: int = MAX_HELD_BYTES,
    ):
        self.max_datagrams = max_datagrams
        self.max_held_bytes = max_held_bytes
        self.timeout_ns = int(timeout_s * 1e9)
        self.stats = DefragStats()
        self._pending: OrderedDict[tuple[bytes, bytes, int, int], _Pending] = OrderedDict()
        self.held_bytes = 0

    def _drop(self, key: tuple[bytes, bytes, int, int]) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None:
            self.held_bytes -= pending.size

    def add(self, fragment: Fragment, ts: int) -> Segment | Datagram | Skip | None:
        """Return the reassembled transport packet once every piece is here, else None."""
        self.stats.fragments += 1
        self._expire(ts)
        key = (fragment.src, fragment.dst, fragment.protocol, fragment.ident)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(ts)
            if len(self._pending) > self.max_datagrams:
                self._drop(next(iter(self._pending)))
                self.stats.overflows += 1
        end = fragment.offset + len(fragment.payload)
        size = len(fragment.payload)
        if end > MAX_DATAGRAM or pending.size + size > MAX_PIECES_BYTES:
            self._drop(key)
            self.stats.overflows += 1
            return None
        if fragment.offset not in pending.pieces:
            pending.pieces[fragment.offset] = bytes(fragment.payload)
            pending.size += size
            self.held_bytes += size
            while self.held_bytes > self.max_held_bytes:  # the oldest datagrams go first
                oldest = next(iter(self._pending))
                self._drop(oldest)
                self.stats.overflows += 1
                if oldest == key:
                    return None
        if not fragment.more:
            pending.total = end
        if pending.total < 0 or pending.size < pending.total:
            return None
        data = bytearray()
        for offset in sorted(pending.pieces):
            piece = pending.pieces[offset]
            if offset > len(data):
                return None  # a hole (overlapping pieces inflated the size)
            data += piece[len(data) - offset :]
        if len(data) < pending.total:
            return None
        self._drop(key)
        self.stats.reassembled += 1
        return transport(
            fragment.src, fragment.dst, fragment.protocol, bytes(data[: pending.total])
        )

    def _expire(self, now: int) -> None:
        horizon = now - self.timeout_ns
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.first_ts >= horizon:
                return
            self._drop(next(iter(self._pending)))
            self.stats.expired += 1
