"""TCP reassembly: turn segments into an ordered byte stream per flow and direction.

Sans-IO: ``TcpReassembler.segment()`` takes a decoded segment and its capture time and returns
events.  It copes with segments out of order, retransmissions and overlaps, sequence-number
wraparound, FIN/RST, idle flows, and a byte cap on what one direction may hold back.  It never
looks at port numbers: which side is the client is decided by the SYN when there is one, and
otherwise by the stage above (the TLS handshake says who sent the ClientHello).

Bytes the capture missed are reported as a ``StreamGap`` and the stream goes on after them.  A
hole is declared missing when the receiver has acknowledged it (so it crossed the wire but not
the capture), when a direction holds more than its cap, or when the flow ends.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from heapq import heappop, heappush
from typing import Any, NamedTuple, TypeVar

from captagent_tls.counters import Counters
from captagent_tls.message import Endpoint
from captagent_tls.net.addresses import format_endpoint
from captagent_tls.net.packet import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Segment

FlowKey = tuple[bytes, int, bytes, int]

SEQ_MASK = 0xFFFFFFFF
SEQ_HALF = 0x80000000
FAR_AHEAD = 1 << 30  # a segment this far beyond the stream is garbage, not a hole
MAX_DISCARDED = 4096  # flows dropped after an internal error whose later segments are ignored
REBASE_AFTER = 1 << 30  # held offsets are re-based once the stream is this far past the base
# What one held segment costs beyond its payload bytes, charged against the direction's byte
# cap so that the cap bounds memory, not only payload.  Its parts (CPython 3.11, x86-64): the
# bytes object's header, 33 (sys.getsizeof(b"")), plus up to 15 of rounding; the int offset,
# 32; the dict entry with its share of the table, 60 to 120 (most right after the table
# doubles); the heap's list slot, ~9: up to ~210.  bench/held_segments.py measures the whole
# with tracemalloc: 109-125 bytes a segment on average (30,000 to 1,000,000 two-byte segments
# copied from frames).  With this charge, a flood of tiny segments at the cap held 0.65-0.9
# of the cap in live memory, and 1.25 at the peak, while a dict copies its table to grow.
HELD_SEGMENT_OVERHEAD = 200


def seq_delta(a: int, b: int) -> int:
    """Signed distance from sequence number b to a, modulo 2**32."""
    d = (a - b) & SEQ_MASK
    return d - 0x100000000 if d >= SEQ_HALF else d


class Flow:
    """One TCP connection.  ``endpoint(d)`` is the sender of direction ``d``.

    Direction 0 is the side that sent the SYN, or the first packet seen when the SYN was not
    captured.  ``context`` belongs to the stage above (its per-connection state).

    The endpoints are kept flat in ``key`` (address and port of direction 0's sender, then of
    the receiver), which is also the reassembler's key for the flow: an idle flow's memory is
    mostly small objects like these, and an agent may hold 100,000 idle flows.
    """

    __slots__ = ("key", "syn_seen", "last_ts", "context", "closed", "forward")

    def __init__(
        self,
        endpoints: tuple[Endpoint, Endpoint],
        syn_seen: bool,
        last_ts: int = 0,
    ):
        (a, b) = endpoints
        self.key: FlowKey = (a[0], a[1], b[0], b[1])
        self.syn_seen = syn_seen
        self.last_ts = last_ts
        self.context: Any = None
        self.closed = False
        self.forward: _Half | None = None  # direction 0 of the stream; its peer is direction 1

    def endpoint(self, direction: int) -> Endpoint:
        """The sender of direction ``direction`` (made from ``key`` on each call)."""
        key = self.key
        return (key[0], key[1]) if direction == 0 else (key[2], key[3])

    @property
    def halves(self) -> tuple[_Half, _Half]:
        forward = self.forward
        assert forward is not None, "a flow the reassembler did not make has no halves"
        return (forward, forward.peer)

    def describe(self, direction: int = 0) -> str:
        return f"{format_endpoint(self.endpoint(direction))} -> " + format_endpoint(
            self.endpoint(1 - direction)
        )

    def __repr__(self) -> str:
        return f"Flow({self.describe()})"


class StreamData(NamedTuple):
    flow: Flow
    direction: int
    data: bytes
    ts_ns: int


class StreamGap(NamedTuple):
    flow: Flow
    direction: int
    size: int  # bytes missing from the stream (0 when unknown)
    ts_ns: int


class FlowClosed(NamedTuple):
    flow: Flow
    reason: str  # "fin", "rst", "timeout", "evicted", "end"
    ts_ns: int


Event = StreamData | StreamGap | FlowClosed


_NO_PENDING: dict[int, bytes] = {}  # shared, never written to


class _Held:
    """Segments that arrived ahead of one direction's stream, keyed by their offset from
    ``base`` (a sequence number at or before the stream position), with the same offsets in a
    heap (``order``): the first held segment is found in O(1) and each one is taken out in
    O(log n), however many are held.  Offsets are plain integers, so they do not wrap.  Made
    when a segment must wait, dropped when none does: an idle direction keeps none."""

    __slots__ = ("segments", "order", "base", "charged")

    def __init__(self, base: int):
        self.segments: dict[int, bytes] = {}
        self.order: list[int] = []
        self.base = base
        self.charged = 0  # payload plus HELD_SEGMENT_OVERHEAD per held segment


class _Half:
    """One direction of a flow."""

    __slots__ = ("flow", "direction", "peer", "next_seq", "held", "fin_seq", "finished")

    def __init__(self, flow: Flow, direction: int):
        self.flow = flow
        self.direction = direction
        self.peer: _Half = self
        self.next_seq: int | None = None
        self.held: _Held | None = None
        self.fin_seq: int | None = None
        self.finished = False

    @property
    def pending(self) -> dict[int, bytes]:
        """The segments held, by offset (empty when none)."""
        return self.held.segments if self.held is not None else _NO_PENDING

    @property
    def pending_bytes(self) -> int:
        """What they are charged against the direction's cap."""
        return self.held.charged if self.held is not None else 0


def _first_held(held: _Held) -> int:
    """The sequence number of the held segment nearest the stream position."""
    return (held.base + held.order[0]) & SEQ_MASK


@dataclass
class TcpStats:
    segments: int = 0
    flows: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    gaps: int = 0
    gap_bytes: int = 0
    buffer_overflows: int = 0
    timeouts: int = 0
    evictions: int = 0


MAX_SHARED_VALUES = 4096
_Shared = TypeVar("_Shared", bytes, int)


class TcpReassembler:
    def __init__(
        self,
        flow_timeout_s: float = 180.0,
        max_direction_bytes: int = 4 << 20,
        max_flows: int = 200_000,
    ):
        self.flow_timeout_ns = int(flow_timeout_s * 1e9)
        self.max_direction_bytes = max_direction_bytes
        self.max_flows = max_flows
        self.stats = TcpStats()
        # one key per flow, in its direction 0: the other direction looks up the reverse key
        self._halves: dict[FlowKey, _Half] = {}
        self._flows: OrderedDict[Flow, None] = OrderedDict()  # least recently active first
        # Flows keep one object per address and port number in use: a server's are shared by
        # all its clients' flows, and small objects are most of what an idle flow costs.
        # Bounded: cleared when full (the flows keep theirs; new flows share again).
        self._values: dict[bytes | int, bytes | int] = {}
        self._clock = 0
        self._next_sweep = 0
        self._discarded: OrderedDict[tuple[bytes, int, bytes, int], None] = OrderedDict()

    def add_counters(self, counters: Counters) -> None:
        stats = self.stats
        for name, value in (
            ("tcp_segments", stats.segments),
            ("flows", stats.flows),
            ("active_flows", self.active_flows),
            ("flow_evictions", stats.evictions),
            ("flow_timeouts", stats.timeouts),
            ("tcp_out_of_order", stats.out_of_order),
            ("tcp_duplicates", stats.duplicates),
            ("tcp_gaps", stats.gaps),
            ("tcp_gap_bytes", stats.gap_bytes),
            ("tcp_buffer_overflows", stats.buffer_overflows),
        ):
            counters.set(name, value)

    @property
    def active_flows(self) -> int:
        return len(self._flows)

    def segment(self, seg: Segment, ts_ns: int) -> list[Event]:
        events: list[Event] = []
        self.stats.segments += 1
        if ts_ns > self._clock:
            self._clock = ts_ns
            if ts_ns >= self._next_sweep:
                self._next_sweep = ts_ns + 1_000_000_000
                self._expire(events)
        flags = seg.flags
        half = self._halves.get((seg.src, seg.sport, seg.dst, seg.dport))
        if half is None:
            forward = self._halves.get((seg.dst, seg.dport, seg.src, seg.sport))
            if forward is not None:
                half = forward.peer
        if half is not None and flags & TCP_SYN and self._is_new_connection(half, seg):
            self._close(half.flow, "fin", ts_ns, events)
            half = None
        if half is None:
            if flags & TCP_RST or not (seg.payload or flags & (TCP_SYN | TCP_FIN)):
                return events
            if self._discarded:
                key = (seg.src, seg.sport, seg.dst, seg.dport)
                if key in self._discarded:
                    if not flags & TCP_SYN:
                        return events  # the rest of a flow dropped after an internal error
                    del self._discarded[key]
            half = self._new_flow(seg, ts_ns, events)
        flow = half.flow
        flow.last_ts = ts_ns
        self._flows.move_to_end(flow)

        seq = seg.seq
        if flags & TCP_SYN:
            seq = (seq + 1) & SEQ_MASK
            if half.next_seq is None:
                half.next_seq = seq
        peer = half.peer
        if flags & TCP_ACK and peer.held and seq_delta(seg.ack, _first_held(peer.held)) >= 0:
            # the receiver has the bytes in the hole, so they crossed the wire unseen.  They
            # were sent before this segment: the stage above learns of them first (a TLS
            # Finished here may cover a handshake message that was in the hole)
            self._skip_hole(peer, ts_ns, events)
        if seg.payload:
            self._data(half, seq, seg.payload, ts_ns, events)
        if flags & TCP_RST:
            self._close(flow, "rst", ts_ns, events)
        elif flags & TCP_FIN:
            half.fin_seq = (seq + len(seg.payload)) & SEQ_MASK
            self._check_finished(half, ts_ns, events)
        return events

    @property
    def next_sweep(self) -> int:
        return self._next_sweep

    def tick(self, ts_ns: int) -> list[Event]:
        """Time passes as a segment at ``ts_ns`` would make it pass (with worker processes,
        the segments of flows another worker follows): flows idle too long are closed."""
        events: list[Event] = []
        if ts_ns > self._clock:
            self._clock = ts_ns
            if ts_ns >= self._next_sweep:
                self._next_sweep = ts_ns + 1_000_000_000
                self._expire(events)
        return events

    def flush(self, ts_ns: int | None = None) -> list[Event]:
        """End of input: deliver what is held back (across holes) and close every flow."""
        events: list[Event] = []
        for flow in list(self._flows):
            self._close(flow, "end", ts_ns if ts_ns is not None else flow.last_ts, events)
        return events

    def expire(self, now_ns: int) -> list[Event]:
        """Close flows idle for longer than the flow timeout (live capture calls this)."""
        events: list[Event] = []
        self._clock = max(self._clock, now_ns)
        self._expire(events)
        return events

    def flow_for(self, src: bytes, sport: int, dst: bytes, dport: int) -> Flow | None:
        """The flow a segment with these endpoints belongs to, if it is tracked."""
        half = self._halves.get((src, sport, dst, dport))
        if half is None:
            half = self._halves.get((dst, dport, src, sport))
        return half.flow if half is not None else None

    def discard(self, flow: Flow) -> None:
        """Forget a flow at once, delivering nothing more of it (after an internal error).
        Its later segments are ignored until a SYN opens a new connection on its ports."""
        flow.closed = True
        key = flow.key
        if self._halves.get(key) is flow.forward:
            del self._halves[key]
        self._flows.pop(flow, None)
        self._discarded[key] = None
        self._discarded[(key[2], key[3], key[0], key[1])] = None
        while len(self._discarded) > MAX_DISCARDED:
            self._discarded.popitem(last=False)

    # -- internals -------------------------------------------------------------------------

    def _is_new_connection(self, half: _Half, seg: Segment) -> bool:
        if half.flow.closed or half.finished:
            return True
        # a SYN whose sequence number does not fit the current stream reuses the port pair
        return (
            half.flow.syn_seen
            and half.next_seq is not None
            and not (seg.flags & TCP_ACK and half.direction == 1)
            and (seg.seq + 1) & SEQ_MASK != half.next_seq
        )

    def _new_flow(self, seg: Segment, ts_ns: int, events: list[Event]) -> _Half:
        shared = self._shared
        a = (shared(seg.src), shared(seg.sport))
        b = (shared(seg.dst), shared(seg.dport))
        syn = bool(seg.flags & TCP_SYN)
        if syn and seg.flags & TCP_ACK:
            a, b = b, a  # a SYN-ACK comes from the server: direction 0 stays the client
        self.stats.flows += 1
        flow = Flow((a, b), syn_seen=syn, last_ts=ts_ns)
        forward, backward = _Half(flow, 0), _Half(flow, 1)
        forward.peer, backward.peer = backward, forward
        flow.forward = forward
        self._halves[flow.key] = forward
        self._flows[flow] = None
        if len(self._flows) > self.max_flows:
            oldest = next(iter(self._flows))
            self.stats.evictions += 1
            self._close(oldest, "evicted", ts_ns, events)
        return forward if (seg.src, seg.sport) == a else backward

    def _shared(self, value: _Shared) -> _Shared:
        """The one object for this address or port number that the flows keep."""
        shared = self._values.get(value)
        if shared is not None:
            return shared  # type: ignore[return-value]
        if len(self._values) >= MAX_SHARED_VALUES:
            self._values.clear()
        self._values[value] = value
        return value

    def _data(
        self, half: _Half, seq: int, payload: bytes | memoryview, ts_ns: int, events: list[Event]
    ) -> None:
        if half.next_seq is None:
            half.next_seq = seq
        delta = seq_delta(seq, half.next_seq)
        if delta <= 0:
            if delta < 0:
                if -delta >= len(payload):
                    self.stats.duplicates += 1
                    return
                payload = payload[-delta:]  # a retransmission that overlaps what we have
            data = bytes(payload)
            half.next_seq = (half.next_seq + len(data)) & SEQ_MASK
            events.append(StreamData(half.flow, half.direction, data, ts_ns))
            if half.held is not None:
                self._drain(half, ts_ns, events)
            return
        if delta > FAR_AHEAD:
            return
        self.stats.out_of_order += 1
        waiting = half.held
        if waiting is None:
            waiting = half.held = _Held(half.next_seq)
        offset = ((half.next_seq - waiting.base) & SEQ_MASK) + delta
        segments = waiting.segments
        held = segments.get(offset)
        if held is None:
            segments[offset] = bytes(payload)
            heappush(waiting.order, offset)
            waiting.charged += len(payload) + HELD_SEGMENT_OVERHEAD
        elif len(held) < len(payload):
            segments[offset] = bytes(payload)
            waiting.charged += len(payload) - len(held)
        if waiting.charged > self.max_direction_bytes:
            self.stats.buffer_overflows += 1
            self._skip_hole(half, ts_ns, events)

    def _drain(self, half: _Half, ts_ns: int, events: list[Event]) -> None:
        """Deliver held segments that the stream has now reached, first offset first: drop
        those it has passed, and deliver the new part of those that reach beyond it."""
        assert half.next_seq is not None
        waiting = half.held
        if waiting is None:
            return
        position = (half.next_seq - waiting.base) & SEQ_MASK
        if position > REBASE_AFTER:
            # keep the distance from the base far from 2**32, where it would wrap; every
            # offset moves by the same amount, so the heap stays a heap
            waiting.segments = {
                offset - position: data for offset, data in waiting.segments.items()
            }
            waiting.order = [offset - position for offset in waiting.order]
            waiting.base = half.next_seq
            position = 0
        pending, order = waiting.segments, waiting.order
        start = position
        while order:
            first = order[0]
            if first > position:
                break
            heappop(order)
            data = pending.pop(first)
            waiting.charged -= len(data) + HELD_SEGMENT_OVERHEAD
            behind = position - first
            if behind:
                if behind >= len(data):
                    continue  # the stream already has all of it
                data = data[behind:]
            position += len(data)
            events.append(StreamData(half.flow, half.direction, data, ts_ns))
        if position != start:
            half.next_seq = (waiting.base + position) & SEQ_MASK
        if order:
            return
        half.held = None
        self._check_finished(half, ts_ns, events)

    def _skip_hole(self, half: _Half, ts_ns: int, events: list[Event]) -> None:
        """Give up on the bytes before the first held segment and go on after them."""
        if half.held is None or half.next_seq is None:
            return
        start = half.next_seq
        first = _first_held(half.held)
        size = seq_delta(first, start)
        if size <= 0:
            self._drain(half, ts_ns, events)
            return
        self.stats.gaps += 1
        self.stats.gap_bytes += size
        events.append(StreamGap(half.flow, half.direction, size, ts_ns))
        half.next_seq = first
        self._drain(half, ts_ns, events)

    def _check_finished(self, half: _Half, ts_ns: int, events: list[Event]) -> None:
        if half.fin_seq is not None and half.next_seq == half.fin_seq and half.held is None:
            half.finished = True
            if half.peer.finished:
                self._close(half.flow, "fin", ts_ns, events)

    def _close(self, flow: Flow, reason: str, ts_ns: int, events: list[Event]) -> None:
        if flow.closed:
            return
        flow.closed = True  # first: delivering what is held may find both halves finished
        for half in flow.halves:
            while half.held is not None:
                self._skip_hole(half, ts_ns, events)
        key = flow.key
        if self._halves.get(key) is flow.forward:
            del self._halves[key]
        self._flows.pop(flow, None)
        events.append(FlowClosed(flow, reason, ts_ns))

    def _expire(self, events: list[Event]) -> None:
        horizon = self._clock - self.flow_timeout_ns
        while self._flows:
            oldest = next(iter(self._flows))
            if oldest.last_ts >= horizon:
                break
            self.stats.timeouts += 1
            self._close(oldest, "timeout", oldest.last_ts + self.flow_timeout_ns, events)
