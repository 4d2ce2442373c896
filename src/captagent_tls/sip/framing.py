"""SIP framing over a byte stream (RFC 3261 §18.3): cut each direction's decrypted bytes into
messages by Content-Length, however the sender cut its writes.  Sans-IO.

CRLF keep-alives (RFC 5626 §3.5.1) between messages are skipped.  Bytes that are not SIP are
passed on as raw chunks rather than lost; so are the fragments of a message cut by a gap.

What framers hold while a message is incomplete is bounded twice: per message
(``max_message_bytes``) and for all framers together (``SipBudget.limit``).  A message over
either bound is dropped whole, counted, and framing goes on after it: its bytes are skipped by
its Content-Length, or, when its header block never completed, by hunting for the next start
line as after a gap.  Nothing of it is emitted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from captagent_tls.counters import Counters

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024  # a longer Content-Length is not believed: the block is not SIP
# The longest SIP message one direction may buffer until it is complete (one that arrives
# whole in a single read needs no buffer and passes).  SIP servers bound a message on a stream
# far lower: OpenSIPS reads each TCP message into a 65,535-byte buffer (TCP_BUF_SIZE) and
# Kamailio's tcp_rd_buf_size (default 4,096; configurations often set 16,384-65,536) also
# limits the largest message it can receive.  1 MiB is 16 times what either accepts by
# default, so anything a real server takes comes through, and an attacker's flow costs at
# most this much.
MAX_MESSAGE_BYTES = 1 << 20
# All framers together: 64 of the largest messages at once.  Messages that arrive in one
# record (nearly all) are never buffered, so a busy agent holds a small part of this.
MAX_HELD_BYTES = 64 << 20

_START_LINE = re.compile(
    rb"SIP/2\.0 \d{3}[ \r]|[A-Za-z][A-Za-z0-9!%*_+`'~.-]* [^ \r\n]+ SIP/2\.0\r\n"
)
# the start of a message somewhere inside a stream (after a gap): at a line start
_START_ANYWHERE = re.compile(
    rb"(?:^|(?<=\n))(?:SIP/2\.0 \d{3} |[A-Z][A-Z0-9_.!%*+`'~-]* [^ \r\n]+ SIP/2\.0\r\n)"
)
_CONTENT_LENGTH = re.compile(rb"\n(?:content-length|l)[ \t]*:[ \t]*(\d+)", re.IGNORECASE)
_CALL_ID = re.compile(rb"\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?\n", re.IGNORECASE)
# a first line still being received: a method token or "SIP/2.0", then anything to the end
_PARTIAL_START_LINE = re.compile(rb"[A-Za-z][A-Za-z0-9!%*_+`'~./-]*(?: [^\r\n]*)?\r?\Z")
HUNT_HOLD_BACK = 256


class Unit(NamedTuple):
    """One framed unit: a SIP message, or raw bytes that are not one."""

    data: bytes
    call_id: str | None
    is_sip: bool


def call_id_of(headers: bytes) -> str | None:
    return _call_id(headers, 0, len(headers))


# The usual spellings are found with bytes.find; the regexes handle any case and the compact
# forms.  Framing runs once per message, so this matters for throughput.


def _content_length(data: bytes | bytearray, start: int, end: int) -> int:
    at = data.find(b"\r\nContent-Length:", start, end)
    if at >= 0:
        line_end = data.find(b"\r\n", at + 17, end)
        value = data[at + 17 : line_end].strip()
        if value.isdigit():
            return int(value)
    match = _CONTENT_LENGTH.search(data, start - 1 if start else 0, end)
    return int(match.group(1)) if match else 0


def _call_id(data: bytes | bytearray, start: int, end: int) -> str | None:
    at = data.find(b"\r\nCall-ID:", start, end)
    if at >= 0:
        line_end = data.find(b"\r\n", at + 10, end)
        return bytes(data[at + 10 : line_end]).strip().decode("utf-8", "replace")
    match = _CALL_ID.search(data, start - 1 if start else 0, end)
    return match.group(1).decode("utf-8", "replace") if match else None


def frame_datagram(payload: bytes) -> Unit | None:
    """A UDP datagram carries one SIP message (RFC 3261 §18.3), or a keep-alive."""
    if not _START_LINE.match(payload):
        return None
    header_end = payload.find(b"\r\n\r\n")
    headers = payload if header_end < 0 else payload[: header_end + 2]
    return Unit(payload, call_id_of(headers), True)


@dataclass(slots=True)
class SipBudget:
    """What all the SIP framers of a pipeline may hold together, and what the bounds dropped.

    One object shared by the framers: each charges the bytes it holds and gives them back when
    it lets go (``SipFramer.flush`` or ``gap``).
    """

    limit: int = MAX_HELD_BYTES
    max_message_bytes: int = MAX_MESSAGE_BYTES
    held: int = 0
    oversized_messages: int = 0  # longer than max_message_bytes: dropped
    over_budget_messages: int = 0  # dropped because all framers together held the limit
    dropped_bytes: int = 0  # bytes of the messages dropped by either bound

    def add_counters(self, counters: Counters) -> None:
        counters.set("sip_messages_dropped", self.oversized_messages, "message_size")
        counters.set("sip_messages_dropped", self.over_budget_messages, "all_flows_held")
        counters.set("sip_dropped_bytes", self.dropped_bytes)
        counters.set("sip_held_bytes", self.held)
        counters.set("sip_bound_bytes", self.max_message_bytes, "message_size")
        counters.set("sip_bound_bytes", self.limit, "all_flows_held")


class SipFramer:
    """Framing state for one direction of one connection."""

    __slots__ = ("buf", "hunting", "started", "raw", "budget", "skip")

    def __init__(self, budget: SipBudget | None = None) -> None:
        self.buf = bytearray()
        # out of step (after lost bytes or a broken message): look for a start line
        self.hunting = False
        self.started = False  # a first SIP message has been framed
        self.raw = False  # the stream did not begin with SIP: pass it on as it comes
        self.budget = budget if budget is not None else SipBudget()  # charged len(buf)
        self.skip = 0  # bytes still to come of a message that is being dropped

    @property
    def idle(self) -> bool:
        """Holds nothing a fresh framer would not know: it may be dropped between messages."""
        return not self.buf and not self.hunting and not self.raw and not self.skip

    def feed(self, data: bytes) -> list[Unit]:
        if self.raw:
            return [Unit(data, None, False)]
        if self.skip:
            if len(data) <= self.skip:
                self.skip -= len(data)
                self.budget.dropped_bytes += len(data)
                return []
            self.budget.dropped_bytes += self.skip
            data = data[self.skip :]
            self.skip = 0
        units: list[Unit] = []
        buf = self.buf
        if buf:
            held = len(buf)
            buf += data
            del buf[: self._frame(buf, units)]
            if len(buf) != held:
                self._charge(len(buf) - held)
        else:  # the usual case: the message is framed straight from data, nothing is held
            pos = self._frame(data, units)
            if pos < len(data):
                buf += data[pos:]
                self._charge(len(buf))
        return units

    def gap(self) -> list[Unit]:
        """Bytes before what comes next are missing: hand over the fragment held so far."""
        units = self.flush()
        self.hunting = self.started
        self.raw = False
        return units

    def flush(self) -> list[Unit]:
        """End of stream: what is left is an incomplete message, handed over as raw bytes."""
        self.skip = 0
        if not self.buf:
            return []
        rest = bytes(self.buf)
        self.budget.held -= len(rest)
        self.buf.clear()
        return [Unit(rest, None, False)] if rest.strip(b"\r\n") else []

    def _charge(self, grown: int) -> None:
        """The buffer changed by ``grown`` bytes in this feed (all of it was charged before)."""
        budget = self.budget
        if grown > 0 and budget.held + grown > budget.limit:
            budget.over_budget_messages += 1
            budget.held -= len(self.buf) - grown
            self._drop_held()
        else:
            budget.held += grown

    def _drop_held(self) -> None:
        """Drop the incomplete message held: skip the rest of it by its Content-Length, or,
        when its header block is not complete, hunt for the next start line."""
        buf = self.buf
        header_end = buf.find(b"\r\n\r\n") if not self.hunting else -1
        if header_end >= 0 and _START_LINE.match(buf):
            total = header_end + 4 + _content_length(buf, 0, header_end + 2)
            self.skip = max(total - len(buf), 0)
            self.started = True
        else:
            self.hunting = True
        self.budget.dropped_bytes += len(buf)
        buf.clear()

    def _frame(self, data: bytes | bytearray, units: list[Unit]) -> int:
        pos = 0
        end = len(data)
        while pos < end:
            # keep-alives: a CRLF pair (ping) or a single CRLF (pong) between messages
            while pos < end and data[pos] in (13, 10):
                pos += 1
            if pos >= end:
                break
            if self.hunting:
                found = _START_ANYWHERE.search(data, pos)
                if found is None:
                    keep = max(pos, end - HUNT_HOLD_BACK)  # a start line may straddle reads
                    if keep > pos:
                        units.append(Unit(bytes(data[pos:keep]), None, False))
                    return keep
                if found.start() > pos:
                    units.append(Unit(bytes(data[pos : found.start()]), None, False))
                pos = found.start()
                self.hunting = False
            if not self.started and not _maybe_start_line(data, pos):
                self.raw = True
                units.append(Unit(bytes(data[pos:]), None, False))
                return end
            header_end = data.find(b"\r\n\r\n", pos)
            if header_end < 0:
                if end - pos > min(
                    MAX_HEADER_BYTES, self.budget.max_message_bytes
                ) or not _maybe_start_line(data, pos):
                    self.hunting = True
                    pos = self._skip_line(data, pos, units)
                    continue
                break
            if not _START_LINE.match(data, pos):
                self.hunting = True
                pos = self._skip_line(data, pos, units)
                continue
            body = _content_length(data, pos, header_end + 2)
            if body > MAX_BODY_BYTES:
                self.hunting = True
                pos = self._skip_line(data, pos, units)
                continue
            total_end = header_end + 4 + body
            if total_end > end:
                if total_end - pos > self.budget.max_message_bytes:
                    # too big to hold until it is complete: drop it, and frame what follows
                    self.budget.oversized_messages += 1
                    self.budget.dropped_bytes += end - pos
                    self.started = True
                    self.skip = total_end - end
                    return end
                break
            units.append(
                Unit(bytes(data[pos:total_end]), _call_id(data, pos, header_end + 2), True)
            )
            self.started = True
            pos = total_end
        return pos

    @staticmethod
    def _skip_line(data: bytes | bytearray, pos: int, units: list[Unit]) -> int:
        """Pass the first line on as raw bytes, so the hunt starts after it."""
        line_end = data.find(b"\n", pos)
        line_end = len(data) if line_end < 0 else line_end + 1
        units.append(Unit(bytes(data[pos:line_end]), None, False))
        return line_end


def _maybe_start_line(data: bytes | bytearray, pos: int) -> bool:
    """Could the bytes at pos, with no complete header block yet, begin a SIP message?"""
    if data.find(b"\r\n", pos, pos + 1024) >= 0:
        return _START_LINE.match(data, pos) is not None
    return _PARTIAL_START_LINE.match(data, pos) is not None
