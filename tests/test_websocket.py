"""SIP over WebSocket with bytes alone: the opening handshake, RFC 6455 framing, RFC 7692
permessage-deflate, the per-connection session, and the pipeline hook.

Frames are made by an independent encoder, the ``websockets`` library's own
(``websockets.frames.Frame.serialize`` with its ``PerMessageDeflate`` extension), except the
broken ones, which no library would make and are written out by hand.
"""

from __future__ import annotations

import os
import struct
import tracemalloc
import zlib
from types import SimpleNamespace

import pytest

from captagent_tls.capture import Frame
from captagent_tls.message import Message
from captagent_tls.pipeline import Pipeline
from captagent_tls.tls.events import TlsProblem
from captagent_tls.tls.keys import KeyStore
from captagent_tls.websocket import WebSocketSession, WebSocketStats, looks_like_start
from captagent_tls.websocket.deflate import DeflateParamError, Inflater, negotiated
from captagent_tls.websocket.frames import FrameDecoder, WsMessage, unmask
from captagent_tls.websocket.handshake import (
    HandshakeError,
    accept_value,
    parse_extensions,
    parse_request,
    parse_response,
)
from captagent_tls.websocket.stage import WebSocketStage
from tests.support.tlswriter import TcpConversation

websockets_frames = pytest.importorskip("websockets.frames")
permessage_deflate = pytest.importorskip("websockets.extensions.permessage_deflate")

C2S, S2C = 0, 1


def sip(n: int = 0, body: bytes = b"") -> bytes:
    return (
        b"OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WSS df7jal23ls0d.invalid;"
        b"branch=z9hG4bK%d\r\nCall-ID: call-%d\r\nCSeq: %d OPTIONS\r\nContent-Length: %d"
        b"\r\n\r\n" % (n, n, n + 1, len(body))
    ) + body


def reply(n: int = 0) -> bytes:
    return (
        b"SIP/2.0 200 OK\r\nCall-ID: call-%d\r\nCSeq: %d OPTIONS\r\nContent-Length: 0"
        b"\r\n\r\n" % (n, n + 1)
    )


def deflater(takeover: bool = True, bits: int = 15):
    """websockets' PerMessageDeflate as the sender (its local_* settings are what it uses)."""
    return permessage_deflate.PerMessageDeflate(False, not takeover, 15, bits)


def frame(
    payload: bytes, opcode: str = "TEXT", *, fin: bool = True, mask: bool = True, deflate=None
) -> bytes:
    op = getattr(websockets_frames.Opcode, opcode)
    return websockets_frames.Frame(op, payload, fin=fin).serialize(
        mask=mask, extensions=[deflate] if deflate is not None else None
    )


def feed_all(decoder: FrameDecoder, data: bytes, step: int = 0):
    messages, problems = [], []
    pieces = [data] if not step else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        got, trouble = decoder.feed(piece)
        messages += got
        problems += trouble
    return messages, problems


# --------------------------------------------------------------------------- handshake


def test_accept_value_is_the_rfc_6455_example():
    assert accept_value("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


REQUEST = (
    b"GET /ws HTTP/1.1\r\nHost: sip.example.com\r\nUpgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
)


def response(
    protocol: str | None = "sip",
    extensions: str | None = None,
    accept: str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
    status: bytes = b"101 Switching Protocols",
) -> bytes:
    head = b"HTTP/1.1 " + status + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    head += b"Sec-WebSocket-Accept: " + accept.encode() + b"\r\n"
    if protocol is not None:
        head += b"Sec-WebSocket-Protocol: " + protocol.encode() + b"\r\n"
    if extensions is not None:
        head += b"Sec-WebSocket-Extensions: " + extensions.encode() + b"\r\n"
    return head + b"\r\n"


def test_upgrade_request_and_response():
    request = parse_request(REQUEST)
    assert request.subprotocols == ("sip",) and request.target == "/ws"
    answer = parse_response(
        response(
            extensions='permessage-deflate; server_max_window_bits="10"; client_no_context_takeover'
        ),
        request,
    )
    assert answer.status == 101 and answer.subprotocol == "sip"
    params = negotiated(answer.extensions[0])
    assert params.server_max_window_bits == 10 and params.client_no_context_takeover
    assert not params.server_no_context_takeover and params.client_max_window_bits == 15


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # plain HTTP
        b"GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",  # no Connection: upgrade
        b"POST / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ],
)
def test_requests_that_are_not_an_upgrade(head):
    with pytest.raises(HandshakeError):
        parse_request(head)


def test_responses_the_client_rejects():
    request = parse_request(REQUEST)
    with pytest.raises(HandshakeError, match="Accept"):
        parse_response(response(accept="AAAA"), request)
    with pytest.raises(HandshakeError, match="did not offer"):
        parse_response(response(protocol="msrp"), request)
    assert parse_response(response(status=b"401 Unauthorized"), request).status == 401


@pytest.mark.parametrize(
    "value",
    [
        "client_max_window_bits",
        "server_max_window_bits=16",
        "server_max_window_bits=7",
        "client_no_context_takeover=1",
        "x_unknown",
    ],
)
def test_permessage_deflate_answers_the_client_rejects(value):
    with pytest.raises(DeflateParamError):
        negotiated(parse_extensions(f"permessage-deflate; {value}")[0])


def test_extension_header_syntax():
    got = parse_extensions('permessage-deflate; client_max_window_bits=12, x-foo; a="b"')
    assert [(e.name, e.params) for e in got] == [
        ("permessage-deflate", {"client_max_window_bits": "12"}),
        ("x-foo", {"a": "b"}),
    ]
    with pytest.raises(HandshakeError):
        parse_extensions("permessage-deflate; a=b c")


# --------------------------------------------------------------------------- framing


def test_unmask_matches_the_library():
    key = b"\x37\xfa\x21\x3d"
    data = os.urandom(1001)
    assert unmask(unmask(data, key), key) == data
    wire = frame(data, "BINARY")
    assert wire[1] & 0x80 and unmask(wire[-1001:], wire[4:8]) == data


@pytest.mark.parametrize(
    ("size", "step"),
    [
        (size, step)
        for size in (0, 1, 125, 126, 65535, 65536, 200_000)
        for step in (0, 1, 997)
        if not (step == 1 and size > 70_000)
    ],
)  # byte by byte: the shorter frames are enough
def test_payload_lengths_7_16_and_64_bits_however_the_bytes_arrive(size, step):
    payload = sip(1, b"x" * max(0, size - len(sip(1))))[:size] if size else b""
    data = frame(payload, "BINARY") + frame(sip(2))
    messages, problems = feed_all(FrameDecoder(True, None), data, step)
    assert messages == [WsMessage(2, payload), WsMessage(1, sip(2))]
    assert problems == []


def test_fragments_with_control_frames_between_them():
    whole = sip(3)
    data = (
        frame(whole[:1], fin=False)
        + frame(b"keepalive", "PING")
        + frame(whole[1:40], "CONT", fin=False)
        + frame(b"", "PONG")
        + frame(whole[40:], "CONT")
        + frame(struct.pack("!H", 1000) + b"bye", "CLOSE")
    )
    decoder = FrameDecoder(True, None)
    messages, problems = feed_all(decoder, data, 5)
    assert messages == [WsMessage(1, whole)] and problems == []
    assert decoder.control_frames == 3 and decoder.closed and decoder.close_code == 1000


@pytest.mark.parametrize(
    ("from_client", "masked", "why"),
    [
        (True, False, "client frame without masking"),
        (False, True, "masked server frame"),
    ],
)
def test_a_bad_mask_stops_the_direction(from_client, masked, why):
    data = (
        frame(sip(1), mask=from_client)
        + frame(sip(2), mask=masked)
        + frame(sip(3), mask=from_client)
    )
    decoder = FrameDecoder(from_client, None)
    messages, problems = feed_all(decoder, data)
    assert messages == [WsMessage(1, sip(1))]  # nothing from the bad frame on
    assert [p.kind for p in problems] == ["protocol error"] and why in problems[0].detail
    assert decoder.feed(frame(sip(4), mask=from_client)) == ([], [])


def test_a_frame_that_claims_more_bytes_than_the_stream_has():
    data = frame(sip(1)) + frame(sip(2))[:-10]
    decoder = FrameDecoder(True, None)
    messages, problems = feed_all(decoder, data)
    assert messages == [WsMessage(1, sip(1))] and problems == []
    assert [p.kind for p in decoder.flush()] == ["truncated"]


def test_a_frame_that_claims_fewer_bytes_than_it_carries():
    """Its header says 5: the 5 bytes are a message (not SIP), the rest of the SIP message
    then reads as a frame header with a reserved opcode, and decoding stops there."""
    body = sip(2)
    lying = bytes([0x81, 0x05]) + body  # unmasked, as a server frame
    decoder = FrameDecoder(False, None)
    messages, problems = feed_all(
        decoder, frame(sip(1), mask=False) + lying + frame(sip(3), mask=False)
    )
    assert messages == [WsMessage(1, sip(1)), WsMessage(1, body[:5])]
    assert [p.kind for p in problems] == ["protocol error"]
    assert "reserved opcode" in problems[0].detail


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (bytes([0x82, 0x7F]) + struct.pack("!Q", 1 << 63), "most significant bit"),
        (bytes([0x83, 0x00]), "reserved opcode"),
        (bytes([0xA1, 0x00]), "RSV2/RSV3"),
        (bytes([0xC1, 0x00]), "RSV1 set without permessage-deflate"),
        (bytes([0x09, 0x00]), "control frame"),  # a ping without FIN
        (bytes([0x89, 0x7E, 0x00, 0x7E]) + b"x" * 126, "control frame"),  # a 126-byte ping
        (bytes([0x80, 0x00]), "continuation frame with no message"),
    ],
)
def test_protocol_errors_are_counted_and_stop_the_direction(header, why):
    decoder = FrameDecoder(False, None)
    messages, problems = feed_all(decoder, header + frame(sip(1), mask=False))
    assert messages == [] and [p.kind for p in problems] == ["protocol error"]
    assert why in problems[0].detail


def test_a_frame_over_the_cap_is_skipped_as_it_streams_past():
    decoder = FrameDecoder(True, None, max_frame=1000, max_message=1000)
    big = frame(b"B" * 5000, "BINARY")
    messages, problems = feed_all(decoder, frame(sip(1)) + big + frame(sip(2)), 333)
    assert messages == [WsMessage(1, sip(1)), WsMessage(1, sip(2))]
    assert [p.kind for p in problems] == ["frame too large"]
    assert len(decoder.buf) == 0


def test_a_message_over_the_cap_is_dropped_whole():
    decoder = FrameDecoder(True, None, max_frame=1000, max_message=1500)
    parts = (
        frame(b"a" * 900, fin=False)
        + frame(b"b" * 900, "CONT", fin=False)
        + frame(b"c" * 10, "CONT")
    )
    messages, problems = feed_all(decoder, parts + frame(sip(1)))
    assert messages == [WsMessage(1, sip(1))]
    assert [p.kind for p in problems] == ["message too large"]


# --------------------------------------------------------------------------- deflate


@pytest.mark.parametrize("takeover", [True, False])
@pytest.mark.parametrize("bits", [9, 10, 12, 15])
def test_permessage_deflate_with_and_without_context_takeover(takeover, bits):
    sender = deflater(takeover, bits)
    texts = [sip(n, b"v=0\r\n" * n) for n in range(6)] + [reply(n) for n in range(6)]
    data = b"".join(frame(t, deflate=sender) for t in texts)
    assert all(b"OPTIONS" not in data[i : i + 7] for i in range(len(data)))  # compressed
    decoder = FrameDecoder(True, Inflater(bits, takeover))
    messages, problems = feed_all(decoder, data, 7)
    assert [m.payload for m in messages] == texts and problems == []


def test_a_compressed_fragmented_message_inflates_as_one():
    sender = deflater()
    whole = sip(9, b"a=candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host\r\n" * 50)
    first = websockets_frames.Frame(websockets_frames.Opcode.TEXT, whole[:100], fin=False)
    rest = websockets_frames.Frame(websockets_frames.Opcode.CONT, whole[100:], fin=True)
    data = (
        first.serialize(mask=True, extensions=[sender])
        + frame(b"p", "PING")
        + rest.serialize(mask=True, extensions=[sender])
    )
    assert data[0] & 0x40  # RSV1 on the first frame only
    messages, problems = feed_all(FrameDecoder(True, Inflater()), data)
    assert messages == [WsMessage(1, whole)] and problems == []


def test_a_deflate_stream_that_does_not_inflate_is_dropped():
    sender = deflater(takeover=False)
    garbage = (
        bytes([0xC1, 0x80 | 6]) + b"\x01\x02\x03\x04" + unmask(b"\xff" * 6, b"\x01\x02\x03\x04")
    )
    data = frame(sip(1), deflate=sender) + garbage + frame(sip(2), deflate=sender)
    messages, problems = feed_all(FrameDecoder(True, Inflater(15, takeover=False)), data)
    assert [m.payload for m in messages] == [sip(1), sip(2)]
    assert [p.kind for p in problems] == ["inflate failed"]


def test_a_deflate_bomb_is_counted_and_never_inflated_in_full():
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    compressed = bomb.compress(b"\0" * (64 << 20)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    assert compressed.endswith(b"\x00\x00\xff\xff") and len(compressed) < (1 << 20)
    wire = (
        bytes([0xC2, 0xFF]) + struct.pack("!Q", len(compressed) - 4) + b"\0\0\0\0" + compressed[:-4]
    )
    decoder = FrameDecoder(True, Inflater(15, False, 1 << 20))
    tracemalloc.start()
    try:
        messages, problems = feed_all(decoder, wire + frame(sip(1)), 65536)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert messages == [WsMessage(1, sip(1))]
    assert [p.kind for p in problems] == ["inflate too large"]
    assert peak < 8 << 20  # 64 MiB were never held


def test_lost_window_bytes_are_never_guessed():
    """Picked up after three messages of a connection with context takeover: the next ones
    refer to window bytes we never saw, so they do not inflate and are dropped and counted,
    none is guessed.  A message from a fresh compression context inflates again."""
    sender = deflater(takeover=True)
    wire = [frame(sip(n), deflate=sender) for n in range(6)]
    decoder = FrameDecoder(True, Inflater())
    messages, problems = feed_all(decoder, b"".join(wire[3:]))
    assert messages == []
    assert [p.kind for p in problems] == ["inflate failed"] * 3
    messages, problems = feed_all(decoder, frame(sip(9), deflate=deflater(takeover=True)))
    assert messages == [WsMessage(1, sip(9))] and problems == []


@pytest.mark.parametrize("masked", [True, False])
def test_after_a_gap_the_decoder_finds_the_next_sip_message(masked):
    stream = (
        frame(sip(1), mask=masked)
        + frame(b"x" * 300, "BINARY", mask=masked)
        + frame(sip(2), mask=masked)
        + frame(reply(2), mask=masked)
    )
    decoder = FrameDecoder(masked, None)
    cut = len(frame(sip(1))) + 20  # into the middle of the binary frame
    messages, _ = feed_all(decoder, stream[:cut])
    assert messages == [WsMessage(1, sip(1))]
    decoder.gap()
    messages, problems = feed_all(decoder, stream[cut + 7 :], 50)
    assert messages == [WsMessage(1, sip(2)), WsMessage(1, reply(2))] and problems == []


# --------------------------------------------------------------------------- session


def session_run(exchange: list[tuple[int, bytes]], stats: WebSocketStats | None = None):
    stats = stats or WebSocketStats()
    session = None
    out = []
    for direction, data in exchange:
        if session is None:
            start = looks_like_start(data)
            assert start
            session = WebSocketSession(stats, direction, start, data)
        out += session.feed(direction, data)
    assert session is not None
    out += session.close()
    return session, out, stats


def test_a_sip_websocket_connection_from_the_upgrade_on():
    sender = deflater(takeover=False)
    exchange = [
        (C2S, REQUEST[:30]),
        (C2S, REQUEST[30:]),
        (
            S2C,
            response(
                extensions="permessage-deflate; client_no_context_takeover; "
                "server_no_context_takeover"
            )
            + frame(reply(0), mask=False, deflate=sender),
        ),
        (C2S, frame(sip(1), deflate=sender) + frame(b"\r\n\r\n")),
    ]
    session, out, stats = session_run(exchange)
    assert session.websocket and session.client_dir == C2S
    assert [(d, u.data, u.is_sip, u.call_id) for d, u in out] == [
        (S2C, reply(0), True, "call-0"),
        (C2S, sip(1), True, "call-1"),
    ]
    assert stats.upgrades == stats.sip_connections == 1 and stats.keepalives == 1
    assert session.problems == []


@pytest.mark.parametrize(
    ("answer", "reported"),
    [
        (response(protocol="msrp"), "websocket handshake"),  # not offered: the client rejects it
        (response(protocol=None), "websocket not sip"),
        (response(extensions="x-webkit-deflate-frame"), "websocket not sip"),
        (response(extensions="permessage-deflate; server_max_window_bits=20"), "websocket not sip"),
        (response(accept="wrong"), "websocket handshake"),
        (response(status=b"401 Unauthorized"), None),
    ],
)
def test_connections_that_are_not_sip_over_websocket_pass_as_before(answer, reported):
    later = frame(sip(1), mask=False)
    session, out, stats = session_run([(C2S, REQUEST), (S2C, answer + later)])
    assert not session.websocket
    assert [k for k, _ in session.problems] == ([reported] if reported else [])
    # what SIP stream framing makes of them: raw bytes, exactly what was sent, in order
    assert all(not u.is_sip for _, u in out)
    assert b"".join(u.data for d, u in out if d == C2S) == REQUEST
    assert b"".join(u.data for d, u in out if d == S2C) == answer + later
    assert stats.refused == (1 if reported is None else 0)


def test_plain_http_is_left_alone():
    request = b"GET /index.html HTTP/1.1\r\nHost: example.com\r\n\r\n"
    session, out, _ = session_run([(C2S, request), (S2C, b"HTTP/1.1 200 OK\r\n\r\n")])
    assert not session.websocket and session.problems == []
    assert [(d, u.data, u.is_sip) for d, u in out] == [
        (C2S, request, False),
        (S2C, b"HTTP/1.1 200 OK\r\n\r\n", False),
    ]


def test_start_detection():
    assert looks_like_start(b"GET /") == "http" and looks_like_start(b"GE") == "http"
    assert looks_like_start(sip(1)) == ""  # a SIP stream is SIP stream framing's
    assert looks_like_start(b"ACK sip:bob@example.com SIP/2.0\r\n") == ""
    assert looks_like_start(frame(sip(1))) == "frames"
    assert looks_like_start(frame(reply(1), mask=False)) == "frames"
    assert looks_like_start(frame(b"hello", mask=False)) == ""
    assert looks_like_start(frame(sip(1), deflate=deflater(False))) == "frames"
    assert looks_like_start(bytes([0xC1, 0x85]) + b"abcdefghi") == ""


def test_picked_up_mid_stream_from_a_server_frame():
    sender = deflater(takeover=True)
    client_frames = frame(b"x" * 50, "CONT") + frame(sip(5)) + frame(sip(6), deflate=sender)
    exchange = [(S2C, frame(reply(4), mask=False)), (C2S, client_frames[7:])]
    session, out, stats = session_run(exchange)
    assert session.websocket and session.client_dir == C2S and stats.picked_up == 1
    assert [(d, u.data) for d, u in out] == [(S2C, reply(4)), (C2S, sip(5)), (C2S, sip(6))]
    assert [k for k, _ in session.problems] == ["websocket picked up"]


# --------------------------------------------------------------------------- pipeline


class ListSink:
    def __init__(self):
        self.messages: list[Message] = []

    def emit(self, message: Message) -> None:
        self.messages.append(message)

    def close(self) -> None:
        pass


CLIENT_IP, SERVER_IP = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])


def tcp_frames(
    exchange: list[tuple[int, bytes]], *, syn: bool = True, mss: int = 1400, port: int = 8080
) -> list[Frame]:
    """Ethernet/IPv4/TCP frames of one connection carrying ``exchange`` in order."""
    conversation = TcpConversation(server_port=port)
    if syn:
        conversation.open()
    for direction, data in exchange:
        for at in range(0, len(data), mss):
            conversation.send(direction, data[at : at + mss])
    conversation.close()
    return conversation.frames


def run_pipeline(frames: list[Frame]):
    sink = ListSink()
    problems: list[TlsProblem] = []
    pipeline = Pipeline(KeyStore(), [sink], on_problem=problems.append)
    for f in frames:
        pipeline.frame(f)
    pipeline.finish()
    [websocket] = [s for s in pipeline.stream_stages if isinstance(s, WebSocketStage)]
    stats = SimpleNamespace(**vars(pipeline.stats), websocket=websocket.stats)
    return sink.messages, problems, stats


def test_plain_ws_through_the_pipeline():
    big = sip(3, b"a=x\r\n" * 2000)
    exchange = [
        (C2S, REQUEST),
        (S2C, response()),
        (C2S, frame(sip(1))),
        (S2C, frame(reply(1), mask=False)),
        (C2S, frame(big)),
        (S2C, frame(b"\x03\xe8", "CLOSE", mask=False)),
        (C2S, frame(b"\x03\xe8", "CLOSE")),
    ]
    messages, problems, stats = run_pipeline(tcp_frames(exchange))
    assert [(m.transport, m.from_client, m.payload, m.is_sip) for m in messages] == [
        ("ws", True, sip(1), True),
        ("ws", False, reply(1), True),
        ("ws", True, big, True),
    ]
    assert messages[0].src == (CLIENT_IP, 40000) and messages[1].src == (SERVER_IP, 8080)
    assert problems == [] and stats.sip_messages == stats.plain_sip_messages == 3
    assert stats.websocket.control_frames == 2


def test_plain_ws_picked_up_mid_stream_through_the_pipeline():
    """No SYN, no handshake, and the server speaks first: direction 0 is the server, but the
    masking says who the client is."""
    exchange = [(S2C, frame(reply(1), mask=False)), (C2S, frame(sip(2)))]
    messages, problems, stats = run_pipeline(tcp_frames(exchange, syn=False))
    assert [(m.transport, m.from_client, m.payload) for m in messages] == [
        ("ws", False, reply(1)),
        ("ws", True, sip(2)),
    ]
    assert [p.kind for p in problems] == ["websocket picked up"]
    assert "WebSocket 10.0.0.1:40000 -> 10.0.0.2:8080: picked up" in problems[0].message


def test_sip_over_plain_tcp_and_plain_http_are_unchanged():
    sip_flow = tcp_frames([(C2S, sip(1) + sip(2)), (S2C, reply(1))], port=5060)
    http_flow = tcp_frames(
        [
            (C2S, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            (S2C, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ]
    )
    messages, problems, stats = run_pipeline(sip_flow)
    assert [(m.transport, m.payload) for m in messages] == [
        ("tcp", sip(1)),
        ("tcp", sip(2)),
        ("tcp", reply(1)),
    ]
    messages, problems, stats = run_pipeline(http_flow)
    assert messages == [] and problems == [] and stats.plain_other_bytes > 0
