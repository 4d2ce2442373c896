"""sip/framing.py: SIP framing of a byte stream (``SipFramer``) and of datagrams.

Input: option byte (datagram or stream), then for a stream the bytes, cut into chunks by a
separator byte chosen by the input, with a gap wherever the separator is doubled.

Oracle: no exception; in each gap-free run of the stream the units handed over are, in
order, the run's bytes with only CR and LF bytes left out (keep-alives): nothing is
invented, reordered, duplicated or lost, and whatever is held back comes out at the gap
or the end.  A unit marked as SIP begins with a SIP start line and holds a blank line.
A datagram unit is the whole datagram.
"""

from __future__ import annotations

import re

from captagent_tls.sip.framing import SipBudget, SipFramer, frame_datagram
from fuzz import mutate
from fuzz.oracle import OracleFailure

MAX_LEN = 8192
DICTIONARY = [
    b"SIP/2.0",
    b"SIP/2.0 200 ",
    b"INVITE ",
    b"\r\n\r\n",
    b"\r\n",
    b"Content-Length:",
    b"\nl:",
    b"Call-ID:",
    b"\ni:",
    b" 99999999",
]
# RFC 3261 §7.1 / §7.2 start lines, written here independently of the product's pattern
START_LINE = re.compile(
    rb"(SIP/2\.0 \d{3}[ \r]|[A-Za-z][A-Za-z0-9!%*_+`'~.-]* [^ \r\n]+ SIP/2\.0\r\n)"
)


def _check_run(run: bytes, units: list[tuple[bytes, bool]], dropped: int) -> None:
    """The units are the run's bytes in order; what lies between them is CR and LF
    (keep-alives) or a message the size bounds dropped (at most ``dropped`` bytes in all)."""
    pos = 0
    skipped_bytes = 0
    for data, is_sip in units:
        if not data:
            raise OracleFailure("sip-empty-unit", "a unit without bytes")
        if is_sip and (not START_LINE.match(data) or b"\r\n\r\n" not in data):
            raise OracleFailure("sip-not-a-message", f"{data[:60]!r}")
        found = run.find(data, pos)
        if found < 0:
            raise OracleFailure(
                "sip-invented",
                f"unit after stream offset {pos} is not in the stream: {data[:60]!r}",
            )
        skipped_bytes += len(run[pos:found].replace(b"\r", b"").replace(b"\n", b""))
        pos = found + len(data)
    skipped_bytes += len(run[pos:].replace(b"\r", b"").replace(b"\n", b""))
    if skipped_bytes > dropped:
        raise OracleFailure(
            "sip-lost",
            f"{skipped_bytes} bytes never handed over ({dropped} dropped by the size bounds)",
        )


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    option, separator, body = data[0], data[1], data[2:]
    if option & 1:
        unit = frame_datagram(body)
        if unit is not None and (unit.data != body or not unit.is_sip):
            raise OracleFailure("sip-datagram", "the unit is not the datagram")
        return
    budget = SipBudget()
    framer = SipFramer(budget)
    runs = body.split(bytes([separator, separator]))
    for index, run in enumerate(runs):
        dropped_before = budget.dropped_bytes
        units: list[tuple[bytes, bool]] = []
        for chunk in run.split(bytes([separator])):
            if chunk:
                units += [(u.data, u.is_sip) for u in framer.feed(chunk)]
        last = index == len(runs) - 1
        units += [(u.data, u.is_sip) for u in (framer.flush() if last else framer.gap())]
        _check_run(
            run.replace(bytes([separator]), b""), units, budget.dropped_bytes - dropped_before
        )


def seeds() -> list[bytes]:
    out = []
    for seed in mutate.seeds()[:8]:
        for stream in list(seed.sent.by_connection.values())[:2]:
            # cut every 100 bytes with a separator that the stream does not hold
            separator = next(b for b in range(1, 256) if bytes([b]) not in stream)
            pieces = [stream[i : i + 100] for i in range(0, len(stream), 100)]
            out.append(bytes([0, separator]) + bytes([separator]).join(pieces)[: MAX_LEN - 2])
            gap = bytes([separator, separator]).join([stream[:300], stream[450:900]])
            out.append((bytes([2, separator]) + gap)[:MAX_LEN])
        message = seed.truth.messages[0].payload
        out.append((bytes([1, 0]) + message)[:MAX_LEN])
    return out
