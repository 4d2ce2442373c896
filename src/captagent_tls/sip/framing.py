"""SIP framing over a byte stream (RFC 3261 §18.3): cut each direction's decrypted bytes into
messages by Content-Length, however the sender cut its writes.  Sans-IO.

CRLF keep-alives (RFC 5626 §3.5.1) between messages are skipped.  Bytes that are not SIP are
passed on as raw chunks rather than lost; so are the fragments of a message cut by a gap.
"""

from __future__ import annotations

import re
from typing import NamedTuple

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024

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


class SipFramer:
    """Framing state for one direction of one connection."""

    __slots__ = ("buf", "hunting", "started", "raw")

    def __init__(self) -> None:
        self.buf = bytearray()
        # out of step (after lost bytes or a broken message): look for a start line
        self.hunting = False
        self.started = False  # a first SIP message has been framed
        self.raw = False  # the stream did not begin with SIP: pass it on as it comes

    @property
    def idle(self) -> bool:
        """Holds nothing a fresh framer would not know: it may be dropped between messages."""
        return not self.buf and not self.hunting and not self.raw

    def feed(self, data: bytes) -> list[Unit]:
        if self.raw:
            return [Unit(data, None, False)]
        units: list[Unit] = []
        buf = self.buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        pos = self._frame(view, units)
        if view is buf:
            del buf[:pos]
        elif pos < len(view):
            buf += view[pos:]
        return units

    def gap(self) -> list[Unit]:
        """Bytes before what comes next are missing: hand over the fragment held so far."""
        units = self.flush()
        self.hunting = self.started
        self.raw = False
        return units

    def flush(self) -> list[Unit]:
        """End of stream: what is left is an incomplete message, handed over as raw bytes."""
        if not self.buf:
            return []
        rest = bytes(self.buf)
        self.buf.clear()
        return [Unit(rest, None, False)] if rest.strip(b"\r\n") else []

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
                if end - pos > MAX_HEADER_BYTES or not _maybe_start_line(data, pos):
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
                break
            units.append(Unit(bytes(data[pos:total_end]),
                              _call_id(data, pos, header_end + 2), True))
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
