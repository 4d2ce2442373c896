"""net/packet.py: decode a frame of any link type down to TCP, UDP or an IP fragment.

Input: two bytes choose the link type (one of those the decoder knows, or any 16-bit
value), the rest is the frame.

Oracle: no exception; the result is a ``Segment``, ``Datagram``, ``Fragment`` or ``Skip``;
addresses are 4 or 16 bytes, ports fit in 16 bits, and the payload is a piece of the frame.
"""

from __future__ import annotations

from captagent_tls.net.packet import Datagram, Fragment, Segment, Skip, decode
from fuzz import mutate
from fuzz.oracle import OracleFailure

MAX_LEN = 2048
LINKTYPES = (0, 1, 12, 14, 101, 108, 113, 228, 229, 276)


def linktype_of(selector: int) -> int:
    return LINKTYPES[selector % len(LINKTYPES)] if selector < 0x8000 else selector & 0x7FFF


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    linktype = linktype_of(int.from_bytes(data[:2], "big"))
    frame = data[2:]
    for view in (frame, memoryview(frame)):
        result = decode(linktype, view)
        if type(result) not in (Segment, Datagram, Fragment, Skip):
            raise OracleFailure("decode-result", f"{type(result).__name__}")
        if isinstance(result, Skip):
            continue
        if len(result.src) not in (4, 16) or len(result.dst) != len(result.src):
            raise OracleFailure("decode-address", f"{bytes(result.src)!r} {bytes(result.dst)!r}")
        if not isinstance(result, Fragment) and not (
            0 <= result.sport < 65536 and 0 <= result.dport < 65536
        ):
            raise OracleFailure("decode-port", f"{result.sport} {result.dport}")
        payload = bytes(result.payload)
        if payload and payload not in frame:
            raise OracleFailure("decode-payload", "the payload is not a piece of the frame")


def seeds() -> list[bytes]:
    out = []
    for seed in mutate.seeds():
        selector = next(i for i, t in enumerate(LINKTYPES) if t == seed.linktype)
        for packet in seed.packets[:3]:
            out.append(selector.to_bytes(2, "big") + packet.data[: MAX_LEN - 2])
    # raw IP: an IPv6 packet with a hop-by-hop header and a fragment header; VLAN-tagged
    ipv6 = (
        bytes.fromhex("6000000000200040")
        + bytes(15)
        + b"\x01"
        + bytes(15)
        + b"\x01"
        + bytes.fromhex("2c00000000000000")
        + bytes.fromhex("1100000100000001")
        + bytes(8)
    )
    out.append(LINKTYPES.index(101).to_bytes(2, "big") + ipv6)
    vlan = (
        bytes(12)
        + bytes.fromhex("8100000188a8000208004500001c0001200040110000")
        + bytes.fromhex("7f0000017f000001")
        + bytes.fromhex("13c413c400080000")
    )
    out.append(LINKTYPES.index(1).to_bytes(2, "big") + vlan)
    return out
