"""WebSocket framing (RFC 6455 §5) of one direction of a connection: stream bytes in,
complete messages out.  Sans-IO.

Handled: masking (client frames must be masked, server frames must not), 7-, 16- and 64-bit
payload lengths, fragmented messages with continuation frames, control frames (ping, pong,
close) between the fragments of a message, text and binary messages, the close frame, and
permessage-deflate (RSV1 on the first frame of a message, :mod:`.deflate`).

Bounded: a frame longer than ``max_frame`` is not held but skipped as it streams past, and a
message longer than ``max_message`` (before or after inflation) is dropped; both are counted,
neither ends the decoding.  A frame that breaks the protocol (a reserved opcode or bit, a
control frame that is fragmented or longer than 125 bytes, an unmasked client frame, a
continuation with nothing to continue, a 64-bit length with its top bit set) is one the
receiving peer fails the connection on (§7.1.7): the direction stops there and the rest of
its bytes are counted, never guessed at.  After lost bytes (a gap) the decoder hunts for the
next frame that starts a SIP message.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from captagent_tls.sip.framing import frame_datagram
from captagent_tls.websocket.deflate import InflateError, Inflater

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_KNOWN_OPCODES = frozenset((OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))
MAX_FRAME = 1 << 20  # the default limit of the websockets library and of many servers
MAX_MESSAGE = 1 << 20
MAX_HEADER = 14  # 2 + 8 (64-bit length) + 4 (mask key)
# a data frame that may start a message: text or binary, FIN or not, RSV1 (compressed) or not
_MESSAGE_START = re.compile(rb"[\x01\x02\x41\x42\x81\x82\xc1\xc2]", re.DOTALL)


class WsMessage(NamedTuple):
    """One complete data message: its opcode (text or binary) and its payload, inflated."""

    opcode: int
    payload: bytes


class WsProblem(NamedTuple):
    """Something that went wrong in this direction.  ``kind`` is stable (for counting and
    de-duplication), ``detail`` says what, for a person."""

    kind: str
    detail: str


def unmask(payload: bytes | memoryview, key: bytes) -> bytes:
    """XOR with the 4-byte masking key repeated (§5.3), as one big-integer operation."""
    size = len(payload)
    if not size:
        return b""
    pad = key * (size // 4 + 1)
    return (int.from_bytes(payload, "little") ^ int.from_bytes(pad[:size], "little")).to_bytes(
        size, "little"
    )


class FrameHeader(NamedTuple):
    fin: bool
    rsv: int  # the three RSV bits, as 0x40 | 0x20 | 0x10
    opcode: int
    mask: bytes  # b"" when not masked
    length: int
    size: int  # header bytes


def parse_header(data: bytes | bytearray | memoryview, pos: int) -> FrameHeader | None:
    """The frame header at ``pos``, or None while incomplete."""
    end = len(data)
    if end - pos < 2:
        return None
    b0, b1 = data[pos], data[pos + 1]
    length = b1 & 0x7F
    size = 2
    if length == 126:
        if end - pos < 4:
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        size = 4
    elif length == 127:
        if end - pos < 10:
            return None
        length = int.from_bytes(data[pos + 2 : pos + 10], "big")
        size = 10
    mask = b""
    if b1 & 0x80:
        if end - pos < size + 4:
            return None
        mask = bytes(data[pos + size : pos + size + 4])
        size += 4
    return FrameHeader(bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F, mask, length, size)


def header_problem(header: FrameHeader, from_client: bool | None, deflate: bool) -> str:
    """Why a peer would fail the connection on this frame header; "" when it is fine."""
    if header.opcode not in _KNOWN_OPCODES:
        return f"reserved opcode {header.opcode:#x}"
    if header.length >> 63:
        return "a 64-bit payload length with its most significant bit set"
    if header.opcode >= OP_CLOSE and (not header.fin or header.length > 125):
        return "a control frame that is fragmented or longer than 125 bytes"
    if header.rsv & 0x30:
        return "RSV2/RSV3 set, which no negotiated extension defines"
    if header.rsv & 0x40 and (not deflate or header.opcode not in (OP_TEXT, OP_BINARY)):
        return (
            "RSV1 set without permessage-deflate"
            if not deflate
            else "RSV1 set on a continuation or control frame"
        )
    if from_client is not None and bool(header.mask) != from_client:
        return "a client frame without masking" if from_client else "a masked server frame"
    return ""


class FrameDecoder:
    """Decoding state of one direction.

    ``from_client``: whether this direction's sender is the client (its frames must be
    masked); None when not known yet (picked up mid-stream: the first frame tells).
    ``inflater``: the direction's permessage-deflate state, None when not negotiated.
    ``hunting``: the decoder does not know where a frame starts (the stream was picked up
    mid-way, or bytes were lost) and looks for a frame that starts a SIP message.
    """

    __slots__ = (
        "from_client",
        "inflater",
        "max_frame",
        "max_message",
        "buf",
        "skip",
        "parts",
        "part_bytes",
        "part_opcode",
        "part_compressed",
        "dropping",
        "hunting",
        "broken",
        "closed",
        "frames",
        "control_frames",
        "close_code",
    )

    def __init__(
        self,
        from_client: bool | None,
        inflater: Inflater | None,
        *,
        max_frame: int = MAX_FRAME,
        max_message: int = MAX_MESSAGE,
        hunting: bool = False,
    ):
        self.from_client = from_client
        self.inflater = inflater
        self.max_frame = max_frame
        self.max_message = max_message
        self.buf = bytearray()
        self.skip = 0  # bytes of an oversized frame still to pass over
        self.parts: list[bytes] | None = None  # the fragments of the message in progress
        self.part_bytes = 0
        self.part_opcode = 0
        self.part_compressed = False
        self.dropping = ""  # the message in progress is dropped, and why
        self.hunting = hunting
        self.broken = ""  # the protocol error this direction stopped at
        self.closed = False  # a close frame was seen
        self.frames = 0
        self.control_frames = 0
        self.close_code: int | None = None

    @property
    def deflate(self) -> bool:
        return self.inflater is not None

    def feed(self, data: bytes) -> tuple[list[WsMessage], list[WsProblem]]:
        messages: list[WsMessage] = []
        problems: list[WsProblem] = []
        if self.broken:
            return messages, problems
        buf = self.buf
        if self.skip and not buf:
            if len(data) <= self.skip:
                self.skip -= len(data)
                return messages, problems
            data = data[self.skip :]
            self.skip = 0
        buf += data
        pos = self._frames(buf, messages, problems)
        if self.broken:
            buf.clear()
        else:
            del buf[:pos]
        return messages, problems

    def gap(self) -> list[WsProblem]:
        """Bytes of this direction were lost: drop what was partial, hunt for a frame."""
        problems = []
        if self.parts is not None and not self.dropping:
            problems.append(WsProblem("message lost", "a message was cut by lost bytes"))
        self._end_message()
        self.buf.clear()
        self.skip = 0
        if self.inflater is not None:
            self.inflater.reset()
        if not self.broken:
            self.hunting = True
        return problems

    def flush(self) -> list[WsProblem]:
        """End of the stream: a partial frame or message left is reported, never emitted."""
        problems = []
        if not self.broken and (
            self.buf or self.skip or (self.parts is not None and not self.dropping)
        ):
            problems.append(
                WsProblem(
                    "truncated", "the connection ended inside a frame or a fragmented message"
                )
            )
        self._end_message()
        self.buf.clear()
        self.skip = 0
        return problems

    # -- framing ----------------------------------------------------------------------------

    def _frames(self, buf: bytearray, messages: list[WsMessage], problems: list[WsProblem]) -> int:
        pos = 0
        end = len(buf)
        while pos < end:
            if self.hunting:
                found, keep = self._hunt(buf, pos)
                if found < 0:
                    return keep
                pos = found
            header = parse_header(buf, pos)
            if header is None:
                break
            problem = header_problem(header, self.from_client, self.deflate)
            if problem:
                self.broken = problem
                problems.append(WsProblem("protocol error", problem))
                return end
            if self.from_client is None:
                self.from_client = bool(header.mask)
            self.frames += 1
            if header.length > self.max_frame:
                problems.append(
                    WsProblem(
                        "frame too large",
                        f"a frame of {header.length} bytes (the cap is {self.max_frame})",
                    )
                )
                if header.opcode < OP_CLOSE:
                    self.broken = self._start_dropping(header, "frame too large")
                    if self.broken:
                        problems.append(WsProblem("protocol error", self.broken))
                        return end
                skip = header.size + header.length
                if end - pos >= skip:
                    pos += skip
                    continue
                self.skip = skip - (end - pos)
                return end
            frame_end = pos + header.size + header.length
            if frame_end > end:
                break
            payload = memoryview(buf)[pos + header.size : frame_end]
            data = unmask(payload, header.mask) if header.mask else bytes(payload)
            payload.release()
            pos = frame_end
            self._frame(header, data, messages, problems)
            if self.broken:
                return end
        return pos

    def _frame(
        self, header: FrameHeader, data: bytes, messages: list[WsMessage], problems: list[WsProblem]
    ) -> None:
        opcode = header.opcode
        if opcode >= OP_CLOSE:
            self.control_frames += 1
            if opcode == OP_CLOSE:
                self.closed = True
                if len(data) >= 2:
                    self.close_code = int.from_bytes(data[:2], "big")
            return
        if self.closed:
            self.broken = "a data frame after the close frame"
            problems.append(WsProblem("protocol error", self.broken))
            return
        if opcode == OP_CONTINUATION:
            if self.parts is None:
                self.broken = "a continuation frame with no message to continue"
                problems.append(WsProblem("protocol error", self.broken))
                return
        else:
            if self.parts is not None:
                self.broken = "a new message inside a fragmented one"
                problems.append(WsProblem("protocol error", self.broken))
                return
            self.parts = []
            self.part_bytes = 0
            self.part_opcode = opcode
            self.part_compressed = bool(header.rsv & 0x40)
        if not self.dropping:
            self.part_bytes += len(data)
            if self.part_bytes > self.max_message:
                self.dropping = "message too large"
                problems.append(
                    WsProblem(
                        "message too large", f"a message of more than {self.max_message} bytes"
                    )
                )
                self.parts = []
            else:
                self.parts.append(data)
        if header.fin:
            self._complete(messages, problems)

    def _start_dropping(self, header: FrameHeader, why: str) -> str:
        """The message of this (oversized) data frame is dropped; returns the protocol error
        the frame makes, if any."""
        if header.opcode != OP_CONTINUATION:
            if self.parts is not None:
                return "a new message inside a fragmented one"
            self.part_opcode = header.opcode
            self.part_compressed = bool(header.rsv & 0x40)
        elif self.parts is None:
            return "a continuation frame with no message to continue"
        self.parts = []
        self.dropping = why
        if header.fin:
            self._end_message()
        return ""

    def _complete(self, messages: list[WsMessage], problems: list[WsProblem]) -> None:
        if self.dropping:
            self._end_message()
            return
        parts = self.parts or []
        payload = parts[0] if len(parts) == 1 else b"".join(parts)
        compressed = self.part_compressed
        opcode = self.part_opcode
        self._end_message()
        if compressed:
            assert self.inflater is not None
            try:
                payload = self.inflater.inflate(payload)
            except InflateError as exc:
                kind = "inflate too large" if exc.kind == "too large" else "inflate failed"
                problems.append(
                    WsProblem(
                        kind,
                        f"a compressed message that {exc}"
                        if exc.kind == "too large"
                        else f"a compressed message does not inflate ({exc})",
                    )
                )
                return
        messages.append(WsMessage(opcode, payload))

    def _end_message(self) -> None:
        self.parts = None
        self.part_bytes = 0
        self.dropping = ""

    def _hunt(self, buf: bytearray, pos: int) -> tuple[int, int]:
        """(offset of the next frame that starts a SIP message, or -1; offset from which the
        bytes must be kept while none is found).  A candidate must
        be a whole, valid, final data frame (masked as this direction's sender masks) whose
        payload, unmasked and inflated, opens with a SIP start line."""
        end = len(buf)
        for match in _MESSAGE_START.finditer(buf, pos, max(pos, end - 1)):
            at = match.start()
            header = parse_header(buf, at)
            if header is None:
                return -1, at
            if (
                not header.fin
                or header_problem(header, self.from_client, self.deflate)
                or header.length > self.max_frame
            ):
                continue
            if at + header.size + header.length > end:
                if header.length <= 4096 and self._plausible_start(buf, at, header):
                    return -1, at  # could be it: wait for the rest of the frame
                continue
            data = bytes(buf[at + header.size : at + header.size + header.length])
            if header.mask:
                data = unmask(data, header.mask)
            if header.rsv & 0x40:
                assert self.inflater is not None
                try:
                    data = self.inflater.inflate(data)
                except InflateError:
                    continue
                # the trial went through the inflater: the real pass must start the same way
                self.inflater.reset()
            if frame_datagram(data) is not None:
                self.hunting = False
                return at, at
        return -1, max(pos, end - MAX_HEADER)  # a header may straddle reads

    @staticmethod
    def _plausible_start(buf: bytearray, at: int, header: FrameHeader) -> bool:
        if header.rsv & 0x40:
            return True
        head = bytes(buf[at + header.size : at + header.size + 8])
        if header.mask:
            head = unmask(head, header.mask)
        return head[:1].isalpha() or not head
