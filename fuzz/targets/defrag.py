"""net/ip.py: the IP defragmenter, fed any sequence of fragments.

Input: a few option bits (cap on datagrams held), then records of one fragment each:
which datagram (one of four ids), protocol (UDP or TCP), offset, "more fragments", a time
step, and a payload: literal bytes, or a long run of one byte so that big datagrams cost few
input bytes.

Oracle: no exception; a reassembled datagram is made of bytes the fragments carried at those
offsets (checked for the UDP payload: byte ``i`` equals byte ``i`` of some fragment of that
datagram); and memory stays bounded: no more datagrams held than the cap, and no datagram
holding more bytes than the largest datagram (65,535 + 40) could carry.
"""

from __future__ import annotations

from captagent_tls.net.ip import MAX_DATAGRAM, Defragmenter
from captagent_tls.net.packet import Datagram, Fragment, Segment
from fuzz.bytesource import ByteSource
from fuzz.oracle import OracleFailure

MAX_LEN = 4096
SRC, DST = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"


def one_input(data: bytes) -> None:
    src = ByteSource(data)
    defrag = Defragmenter(max_datagrams=1 + src.below(8), timeout_s=30.0)
    ts = 0
    pieces: dict[tuple[int, int], list[tuple[int, bytes]]] = {}
    while src.remaining:
        ident = src.below(4)
        protocol = 17 if src.flag() else 6
        offset = src.uint(2) & 0xFFF8 if src.flag() else src.below(64) * 8
        more = src.flag()
        ts += src.choice((0, 1, 1_000_000_000, 31_000_000_000))
        payload = src.take(src.below(256)) if src.flag() else bytes([src.uint(1)]) * src.uint(2)
        fragment = Fragment(SRC, DST, protocol, ident, offset, more, payload)
        pieces.setdefault((protocol, ident), []).append((offset, payload))
        result = defrag.add(fragment, ts)
        held = defrag._pending
        if len(held) > defrag.max_datagrams:
            raise OracleFailure("defrag-datagrams", f"{len(held)} datagrams held")
        for key, pending in held.items():
            if pending.size > MAX_DATAGRAM:
                raise OracleFailure(
                    "defrag-unbounded",
                    f"datagram {key[3]} holds {pending.size} bytes of "
                    f"overlapping fragments (a datagram has at most "
                    f"{MAX_DATAGRAM})",
                )
        if result is None:
            continue
        if not isinstance(result, Segment | Datagram):
            continue  # Skip: too short for its transport header
        known = pieces.pop((protocol, ident), [])
        if isinstance(result, Datagram):
            payload = bytes(result.payload)
            for i, byte in enumerate(payload):
                at = 8 + i
                if not any(o <= at < o + len(p) and p[at - o] == byte for o, p in known):
                    raise OracleFailure(
                        "defrag-invented", f"byte {at} of a reassembled datagram was in no fragment"
                    )


def seeds() -> list[bytes]:
    # a two-piece UDP datagram in order, then out of order; overlapping pieces; a flood
    def record(ident: int, udp: bool, offset8: int, more: bool, payload: bytes) -> bytes:
        return bytes([ident, int(udp), 0, offset8, int(more), 0, 1, len(payload)]) + payload

    head = b"\x13\xc4\x13\xc4\x00\x20\x00\x00" + b"INVITE s"
    tail = b"ip:bob SIP/2.0\r\n"
    return [
        b"\x03" + record(0, True, 0, True, head) + record(0, True, 2, False, tail),
        b"\x03" + record(1, True, 2, False, tail) + record(1, True, 0, True, head),
        b"\x00"
        + record(2, True, 0, True, head + tail)
        + record(2, True, 1, True, tail)
        + record(2, True, 2, False, tail),
        b"\x07" + b"".join(record(i % 4, bool(i % 2), i, True, bytes([i]) * 16) for i in range(40)),
    ]
