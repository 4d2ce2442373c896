"""net/tcp.py: TCP reassembly, fed any sequence of segments on a few connections.

Input: option bits (flow cap, per-direction byte cap, flow timeout), then one record per
segment: which of three endpoint pairs and which direction, flags, a sequence number near
where that direction is (next, behind, ahead, far away, or across the 2**32 wrap), an
acknowledgment number, a time step, and a payload.

Oracle (positions are recovered from the reassembler's own next sequence number after each
call, walking that call's events backwards):

* every ``StreamData`` is, byte for byte, what some segment of that direction carried at
  those sequence numbers (nothing invented, nothing shifted);
* no event for a flow after its ``FlowClosed``, one ``FlowClosed`` per flow, none left
  open after ``flush``;
* bytes held out of order are accounted exactly, and stay within the cap (plus the one
  segment that may arrive over it).
"""

from __future__ import annotations

from captagent_tls.net.packet import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Segment
from captagent_tls.net.tcp import (
    HELD_SEGMENT_OVERHEAD,
    FlowClosed,
    StreamData,
    StreamGap,
    TcpReassembler,
    seq_delta,
)
from fuzz.bytesource import ByteSource
from fuzz.oracle import OracleFailure

MAX_LEN = 4096
HOSTS = (b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", b"\x0a\x00\x00\x03")
PAIRS = (
    ((HOSTS[0], 40000), (HOSTS[1], 5061)),
    ((HOSTS[0], 40001), (HOSTS[1], 5061)),
    ((HOSTS[2], 5060), (HOSTS[1], 5060)),
)
FLAG_CHOICES = (
    TCP_ACK,
    TCP_ACK,
    TCP_ACK,
    TCP_SYN,
    TCP_SYN | TCP_ACK,
    TCP_FIN | TCP_ACK,
    TCP_RST,
    0,
    TCP_FIN,
    TCP_RST | TCP_ACK,
)


class Checker:
    def __init__(self) -> None:
        self.sent: dict[tuple[object, object], list[tuple[int, bytes]]] = {}
        self.closed: set[int] = set()
        self.seen_flows: dict[int, object] = {}

    def record(self, seg: Segment) -> None:
        if seg.payload:
            seq = (seg.seq + 1) & 0xFFFFFFFF if seg.flags & TCP_SYN else seg.seq
            key = ((seg.src, seg.sport), (seg.dst, seg.dport))
            self.sent.setdefault(key, []).append((seq, bytes(seg.payload)))

    def events(self, tcp: TcpReassembler, events: list[object]) -> None:
        ends: dict[tuple[int, int], int | None] = {}
        for event in reversed(events):
            flow = event.flow  # type: ignore[attr-defined]
            if id(flow) in self.closed:
                raise OracleFailure("tcp-after-close", f"{type(event).__name__} after close")
            if isinstance(event, FlowClosed):
                continue
            key = (id(flow), event.direction)  # type: ignore[attr-defined]
            if key not in ends:
                ends[key] = flow.halves[event.direction].next_seq  # type: ignore[attr-defined]
            end = ends[key]
            if isinstance(event, StreamGap):
                ends[key] = None if end is None or not event.size else end - event.size
                if event.size < 0:
                    raise OracleFailure("tcp-gap-size", f"gap of {event.size} bytes")
                continue
            assert isinstance(event, StreamData)
            if not event.data:
                raise OracleFailure("tcp-empty-data", "StreamData without bytes")
            if end is None:
                continue
            start = (end - len(event.data)) & 0xFFFFFFFF
            ends[key] = start
            sender = flow.endpoint(event.direction)
            receiver = flow.endpoint(1 - event.direction)
            if not any(
                (off := seq_delta(start, seq)) >= 0
                and off + len(event.data) <= len(p)
                and p[off : off + len(event.data)] == event.data
                for seq, p in self.sent.get((sender, receiver), [])
            ):
                raise OracleFailure(
                    "tcp-invented",
                    f"{len(event.data)} bytes at seq {start} are not what a segment carried there",
                )
        for event in events:
            if isinstance(event, FlowClosed):
                if id(event.flow) in self.closed:
                    raise OracleFailure("tcp-closed-twice", "two FlowClosed for one flow")
                self.closed.add(id(event.flow))
            # (seen_flows keeps every flow: no id is reused)
            self.seen_flows[id(event.flow)] = event.flow  # type: ignore[attr-defined]

    def bounds(self, tcp: TcpReassembler) -> None:
        for flow in list(tcp._flows):
            for half in flow.halves:
                held = sum(len(p) for p in half.pending.values())
                # each held segment is charged its overhead too (net/tcp.py)
                charged = held + HELD_SEGMENT_OVERHEAD * len(half.pending)
                if charged != half.pending_bytes:
                    raise OracleFailure(
                        "tcp-accounting", f"{half.pending_bytes} bytes counted, {charged} held"
                    )
                if held > tcp.max_direction_bytes + 65535:
                    raise OracleFailure("tcp-unbounded", f"{held} bytes held")


def one_input(data: bytes) -> None:
    src = ByteSource(data)
    tcp = TcpReassembler(
        flow_timeout_s=src.choice((180.0, 1.0)),
        max_direction_bytes=src.choice((4 << 20, 64, 1000)),
        max_flows=src.choice((200_000, 1, 2)),
    )
    checker = Checker()
    cursor: dict[tuple[int, int], int] = {}
    ts = 1_000_000_000
    while src.remaining:
        pair = src.below(len(PAIRS))
        direction = src.below(2)
        sender, receiver = PAIRS[pair][direction], PAIRS[pair][1 - direction]
        flags = src.choice(FLAG_CHOICES)
        base = cursor.get((pair, direction), 1000 * (pair + 1) + 500000 * direction)
        how = src.below(6)
        if how == 1:
            base -= src.below(64)  # behind: a retransmission, maybe overlapping
        elif how == 2:
            base += src.below(256)  # ahead: a hole
        elif how == 3:
            base = src.uint(4)  # anywhere
        elif how == 4:
            base = 0xFFFFFFF0  # just before the wrap
        elif how == 5:
            base -= 1
        seq = base & 0xFFFFFFFF
        peer = cursor.get((pair, 1 - direction), 0)
        ack = (peer + src.between(-64, 64)) & 0xFFFFFFFF
        ts += src.choice((0, 1000, 2_000_000_000, 200_000_000_000))
        payload = src.take(src.below(80)) if src.flag() else b""
        seg = Segment(sender[0], receiver[0], sender[1], receiver[1], seq, ack, flags, payload)
        checker.record(seg)
        events = tcp.segment(seg, ts)
        checker.events(tcp, events)
        checker.bounds(tcp)
        cursor[(pair, direction)] = (
            seq + len(payload) + (1 if flags & TCP_SYN else 0)
        ) & 0xFFFFFFFF
    checker.events(tcp, tcp.flush(ts))
    if tcp._flows:
        raise OracleFailure("tcp-open-after-flush", f"{len(tcp._flows)} flows still open")
    unclosed = set(checker.seen_flows) - checker.closed
    if unclosed:
        raise OracleFailure("tcp-not-closed", f"flows {sorted(unclosed)} never closed")


def seeds() -> list[bytes]:
    def seg(pair: int, direction: int, flag: int, how: int, payload: bytes) -> bytes:
        # pair, direction, flags, how (+operands), ack (1 byte), ts, has payload, length
        operand = {0: b"", 1: b"\x10", 2: b"\x20", 3: b"\x00\x00\x10\x00", 4: b"", 5: b""}[how]
        return (
            bytes([pair, direction, flag, how])
            + operand
            + b"\x40\x00"
            + bytes([1 if payload else 0])
            + (bytes([len(payload)]) + payload if payload else b"")
        )

    hello, reply = b"\x16\x03\x01\x00\x05hello", b"\x16\x03\x03\x00\x03abc"
    handshake = seg(0, 0, 3, 0, b"") + seg(0, 1, 4, 0, b"") + seg(0, 0, 0, 0, hello)
    return [
        b"\x00\x00\x00" + handshake + seg(0, 1, 0, 0, reply) + seg(0, 0, 5, 0, b""),
        b"\x00\x01\x00" + handshake + seg(0, 0, 0, 2, b"later") + seg(0, 0, 0, 0, b"now"),
        b"\x00\x02\x01"
        + seg(1, 0, 0, 0, hello)
        + seg(2, 0, 0, 0, reply)
        + seg(0, 0, 0, 4, b"wrap"),
        b"\x01\x00\x02" + handshake + seg(0, 0, 0, 1, b"again") + seg(0, 0, 6, 0, b""),
    ]
