"""One TCP connection that speaks, or is about to speak, WebSocket: from the HTTP upgrade to
the SIP messages it carries (RFC 7118: one SIP message per WebSocket message).  Sans-IO.

A connection becomes a session when the first application bytes of a direction are

* an HTTP/1.1 ``GET`` (the opening handshake): the session holds both directions' bytes
  until the server answers.  A ``101 Switching Protocols`` to subprotocol ``sip`` with no
  extension but permessage-deflate turns the connection into SIP over WebSocket.  Anything
  else (a plain HTTP exchange, a refused upgrade, another subprotocol, an extension we cannot
  read) leaves the bytes to SIP stream framing, exactly as if no session had looked at them
  (over TLS they are passed on as raw bytes); the last two are reported once;
* or a WebSocket frame, masked as a client's or unmasked as a server's, whose payload opens
  with a SIP start line: a connection picked up mid-stream.  Compressed messages are read
  when they do not need window bytes from before the capture (see :mod:`.deflate`).

SIP stream framing never sees these bytes otherwise: a SIP stream does not begin with
``GET`` or with a frame header, so looking costs a SIP connection two byte compares.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from captagent_tls.counters import Counters
from captagent_tls.sip.framing import SipBudget, SipFramer, Unit, frame_datagram
from captagent_tls.websocket.deflate import (
    MAX_WINDOW_BITS,
    DeflateParamError,
    DeflateParams,
    Inflater,
    negotiated,
)
from captagent_tls.websocket.frames import (
    MAX_FRAME,
    MAX_MESSAGE,
    FrameDecoder,
    WsMessage,
    WsProblem,
    header_problem,
    parse_header,
    unmask,
)
from captagent_tls.websocket.handshake import (
    MAX_HEAD_BYTES,
    HandshakeError,
    UpgradeRequest,
    head_end,
    parse_request,
    parse_response,
)

SUBPROTOCOL = "sip"  # RFC 7118 §4.1
_GET = b"GET "
_FRAME_START = frozenset((0x01, 0x02, 0x81, 0x82, 0xC1, 0xC2))
# what any WebSocket connection's first byte is: "G" of the GET, or a frame's first byte
START_BYTES = frozenset((0x47, *_FRAME_START))


@dataclass
class WebSocketStats:
    upgrades: int = 0  # 101 Switching Protocols to WebSocket seen
    sip_connections: int = 0  # of those, subprotocol sip, read here
    other_connections: int = 0  # another (or no) subprotocol, or an unknown extension
    refused: int = 0  # upgrade requests answered with something other than 101
    picked_up: int = 0  # recognised from their frames, without a handshake
    messages: int = 0  # data messages decoded
    inflated: int = 0  # of those, compressed
    keepalives: int = 0  # messages holding only CRLF
    control_frames: int = 0
    problems: dict[str, int] = field(default_factory=dict)  # kind -> count

    def add_counters(self, counters: Counters) -> None:
        for kind in (
            "upgrades",
            "sip_connections",
            "other_connections",
            "refused",
            "picked_up",
            "messages",
            "inflated",
            "keepalives",
            "control_frames",
        ):
            counters.set("websocket", getattr(self, kind), kind)
        for kind, count in self.problems.items():
            counters.set("websocket", count, kind)


def looks_like_start(data: bytes) -> str:
    """What the first bytes of a direction say: "http" (an HTTP request begins, maybe the
    opening handshake), "frames" (a WebSocket frame carrying SIP) or ""."""
    if not data:
        return ""
    if data[0] == 0x47:  # "G"
        return "http" if data[:4] == _GET[: len(data[:4])] else ""
    if data[0] not in _FRAME_START:
        return ""
    header = parse_header(data, 0)
    if header is None or header_problem(header, None, True):
        return ""
    payload = data[header.size : header.size + header.length]
    if header.mask:
        payload = unmask(payload, header.mask)
    if header.rsv & 0x40:
        if len(payload) < header.length or not header.fin:
            return ""
        try:
            payload = Inflater(MAX_WINDOW_BITS, False, MAX_MESSAGE).inflate(payload)
        except Exception:  # InflateError: not a message we can read from here
            return ""
    return "frames" if frame_datagram(payload) is not None else ""


class WebSocketSession:
    """Both directions of one connection.  ``feed``, ``gap`` and ``close`` return
    (direction, unit) pairs in order; ``problems`` collects (kind, detail) for the caller to
    report and clear.  ``websocket`` says whether units are WebSocket messages (True) or the
    connection's bytes framed as a SIP stream (False); ``client_dir`` is the client's
    direction once known."""

    __slots__ = (
        "stats",
        "max_frame",
        "max_message",
        "mode",
        "client_dir",
        "held",
        "request",
        "decoders",
        "framers",
        "problems",
        "_reported",
        "sip_budget",
    )

    def __init__(
        self,
        stats: WebSocketStats,
        direction: int,
        start: str,
        first: bytes,
        *,
        max_frame: int = MAX_FRAME,
        max_message: int = MAX_MESSAGE,
        sip_budget: SipBudget | None = None,
    ):
        self.stats = stats
        self.sip_budget = sip_budget  # what SIP stream framing may hold, with every other flow
        self.max_frame = max_frame
        self.max_message = max_message
        self.held = (bytearray(), bytearray())
        self.request: UpgradeRequest | None = None
        self.decoders: list[FrameDecoder | None] = [None, None]
        self.framers: list[SipFramer | None] = [None, None]
        self.problems: list[tuple[str, str]] = []
        self._reported: set[str] = set()
        if start == "http":
            self.mode = "request"  # waiting for the client's head
            self.client_dir = direction
        else:
            self.mode = "websocket"
            header = parse_header(first, 0)
            assert header is not None
            self.client_dir = direction if header.mask else 1 - direction
            stats.picked_up += 1
            self._report(
                "websocket picked up",
                "picked up mid-stream (no opening handshake "
                "seen): recognised from its frames; compressed messages that need "
                "earlier ones cannot be read",
            )
            for d in (0, 1):
                # without the handshake any sender may compress, with its window carried over
                self.decoders[d] = FrameDecoder(
                    d == self.client_dir,
                    Inflater(MAX_WINDOW_BITS, True, max_message),
                    max_frame=max_frame,
                    max_message=max_message,
                    hunting=d != direction,
                )

    @property
    def websocket(self) -> bool:
        return self.mode == "websocket"

    @property
    def closing(self) -> bool:
        """Both directions sent their close frame."""
        return all(d is not None and d.closed for d in self.decoders)

    # -- input ------------------------------------------------------------------------------

    def feed(self, direction: int, data: bytes) -> list[tuple[int, Unit]]:
        mode = self.mode
        if mode == "websocket":
            return self._decode(direction, data)
        if mode == "raw":
            return self._frame(direction, data)
        held = self.held[direction]
        held += data
        out: list[tuple[int, Unit]] = []
        if len(held) > MAX_HEAD_BYTES + self.max_frame:
            return self._give_up(out)
        if mode == "request":
            if direction == self.client_dir:
                self._request(out)
        elif direction != self.client_dir:
            self._response(out)
        return out

    def gap(self, direction: int) -> list[tuple[int, Unit]]:
        out: list[tuple[int, Unit]] = []
        if self.mode == "websocket":
            decoder = self.decoders[direction]
            if decoder is not None:
                self._problems(decoder.gap())
            return out
        if self.mode != "raw":
            self._give_up(out)  # the handshake lost bytes: nothing to read it by
        framer = self.framers[direction]
        if framer is not None:
            out.extend((direction, unit) for unit in framer.gap())
        return out

    def close(self) -> list[tuple[int, Unit]]:
        """The connection ended: what was partial is reported or handed over."""
        out: list[tuple[int, Unit]] = []
        if self.mode == "websocket":
            for decoder in self.decoders:
                if decoder is not None:
                    self._problems(decoder.flush())
            return out
        if self.mode != "raw":
            self._give_up(out)
        for direction, framer in enumerate(self.framers):
            if framer is not None:
                out.extend((direction, unit) for unit in framer.flush())
        return out

    # -- the opening handshake --------------------------------------------------------------

    def _request(self, out: list[tuple[int, Unit]]) -> None:
        held = self.held[self.client_dir]
        if not held.startswith(_GET[: len(held)]):
            self._give_up(out)
            return
        end = head_end(held)
        if end < 0:
            if len(held) > MAX_HEAD_BYTES:
                self._give_up(out)
            return
        try:
            self.request = parse_request(bytes(held[:end]))
        except HandshakeError:
            self._give_up(out)  # plain HTTP: not ours
            return
        self.mode = "response"
        self._response(out)  # (the server may have spoken already)

    def _response(self, out: list[tuple[int, Unit]]) -> None:
        server = 1 - self.client_dir
        held = self.held[server]
        end = head_end(held)
        if end < 0:
            if len(held) > MAX_HEAD_BYTES:
                self._give_up(out)
            return
        assert self.request is not None
        try:
            response = parse_response(bytes(held[:end]), self.request)
        except HandshakeError as exc:
            self._report("websocket handshake", f"an upgrade the client rejects: {exc}")
            self._give_up(out)
            return
        if response.status != 101:
            self.stats.refused += 1
            self._give_up(out)
            return
        self.stats.upgrades += 1
        if response.subprotocol != SUBPROTOCOL:
            chosen = (
                f"subprotocol {response.subprotocol!r}"
                if response.subprotocol
                else "no subprotocol"
            )
            return self._other(out, f"{chosen}, not {SUBPROTOCOL!r}")
        params: DeflateParams | None = None
        for extension in response.extensions:
            if extension.name != "permessage-deflate" or params is not None:
                return self._other(out, f"extension {extension.name!r}, which we cannot read")
            try:
                params = negotiated(extension)
            except DeflateParamError as exc:
                return self._other(out, f"a permessage-deflate answer the client rejects: {exc}")
        self.stats.sip_connections += 1
        self.mode = "websocket"
        client, server_in = self.client_dir, 1 - self.client_dir
        for direction in (client, server_in):
            inflater = None
            if params is not None:
                from_client = direction == client
                inflater = Inflater(
                    params.client_max_window_bits if from_client else params.server_max_window_bits,
                    not (
                        params.client_no_context_takeover
                        if from_client
                        else params.server_no_context_takeover
                    ),
                    self.max_message,
                )
            self.decoders[direction] = FrameDecoder(
                direction == client,
                inflater,
                max_frame=self.max_frame,
                max_message=self.max_message,
            )
        client_rest = bytes(self.held[client][head_end(self.held[client]) :])
        server_rest = bytes(held[end:])
        self.held[client].clear()
        held.clear()
        # the client may not send frames before the 101, so its bytes come second
        if server_rest:
            out.extend(self._decode(server_in, server_rest))
        if client_rest:
            out.extend(self._decode(client, client_rest))

    def _other(self, out: list[tuple[int, Unit]], why: str) -> None:
        self.stats.other_connections += 1
        self._report(
            "websocket not sip",
            f"a WebSocket connection with {why}: its messages are not read as SIP",
        )
        self._give_up(out)

    def _give_up(self, out: list[tuple[int, Unit]]) -> list[tuple[int, Unit]]:
        """Not SIP over WebSocket: the bytes held go to SIP stream framing, as all later ones."""
        self.mode = "raw"
        for direction in (self.client_dir, 1 - self.client_dir):
            held = self.held[direction]
            if held:
                data = bytes(held)
                held.clear()
                out.extend(self._frame(direction, data))
        return out

    def _frame(self, direction: int, data: bytes) -> list[tuple[int, Unit]]:
        framer = self.framers[direction]
        if framer is None:
            framer = self.framers[direction] = SipFramer(self.sip_budget)
        return [(direction, unit) for unit in framer.feed(data)]

    # -- messages ---------------------------------------------------------------------------

    def _decode(self, direction: int, data: bytes) -> list[tuple[int, Unit]]:
        decoder = self.decoders[direction]
        if decoder is None:
            return []
        messages, problems = decoder.feed(data)
        if problems:
            self._problems(problems)
        if decoder.control_frames:
            self.stats.control_frames += decoder.control_frames
            decoder.control_frames = 0
        return [(direction, unit) for unit in map(self._unit, messages) if unit is not None]

    def _unit(self, message: WsMessage) -> Unit | None:
        stats = self.stats
        stats.messages += 1
        payload = message.payload
        if not payload.strip(b"\r\n"):
            stats.keepalives += 1  # CRLF keep-alives some clients send as messages
            return None
        unit = frame_datagram(payload)
        return Unit(payload, unit.call_id, True) if unit is not None else Unit(payload, None, False)

    def _problems(self, problems: list[WsProblem]) -> None:
        counts = self.stats.problems
        for problem in problems:
            counts[problem.kind] = counts.get(problem.kind, 0) + 1
            self._report(f"websocket {problem.kind}", problem.detail)

    def _report(self, kind: str, detail: str) -> None:
        if kind not in self._reported:  # once per connection and kind
            self._reported.add(kind)
            self.problems.append((kind, detail))
