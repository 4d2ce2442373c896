#!/usr/bin/env python3
"""How fast SIP over WebSocket is read, against the same SIP over plain TCP.

    python -m bench.websocket [--messages N] [--runs N]

One ws:// connection is made up in memory (Ethernet/IPv4/TCP frames of 1,460-byte
segments): the opening handshake, then N SIP messages (INVITE-sized, 700-900 bytes) in
frames made by the websockets library's encoder: masked from the client, with
permessage-deflate (context takeover, as browsers and the library negotiate it) or without.
The same messages also go as a plain SIP-over-TCP stream.  Each is fed to the pipeline
(everything past the capture: TCP reassembly, the TLS stage's "not TLS" path, WebSocket or
SIP framing, one in-memory sink); best of N runs.  Needs the ``websockets`` package.
"""

from __future__ import annotations

import argparse
import random
import time

from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode

from captagent_tls.capture import Frame
from captagent_tls.pipeline import Pipeline
from captagent_tls.tls.keys import KeyStore
from tests.support.tlswriter import TcpConversation

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
REQUEST = (
    f"GET /ws HTTP/1.1\r\nHost: sip.example.com\r\nUpgrade: websocket\r\n"
    f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    f"Sec-WebSocket-Protocol: sip\r\nSec-WebSocket-Extensions: permessage-deflate\r\n"
    f"\r\n"
).encode()


def response(deflate: bool) -> bytes:
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: sip\r\n"
        + (b"Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else b"")
        + b"\r\n"
    )


def messages(n: int) -> list[bytes]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        body = "".join(
            f"a=candidate:{rng.getrandbits(32)} 1 udp {rng.getrandbits(31)} "
            f"10.0.{i % 250}.{rng.randrange(1, 255)} {rng.randrange(1024, 65535)} "
            "typ host\r\n"
            for _ in range(6)
        )
        out.append(
            (
                f"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch="
                f"z9hG4bK{rng.getrandbits(48):x}\r\nFrom: <sip:alice@example.com>;tag={i}\r\n"
                f"To: <sip:bob@example.com>\r\nCall-ID: {rng.getrandbits(64):x}@x.invalid\r\n"
                f"CSeq: {i + 1} INVITE\r\nContent-Type: application/sdp\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}"
            ).encode()
        )
    return out


def tcp_frames(exchange: list[tuple[int, bytes]], mss: int = 1460) -> list[Frame]:
    """Ethernet/IPv4/TCP frames of one connection (the tests' TCP writer) carrying
    ``exchange`` in segments of ``mss`` bytes."""
    port = 443
    conversation = TcpConversation(server_port=port)
    conversation.open()
    for direction, data in exchange:
        for at in range(0, len(data), mss):
            conversation.send(direction, data[at : at + mss])
    conversation.close()
    return conversation.frames


class CountingSink:
    def __init__(self) -> None:
        self.count = 0

    def emit(self, message: object) -> None:
        self.count += 1

    def close(self) -> None:
        pass


def run(frames: list[Frame], runs: int) -> tuple[float, int]:
    best, count = float("inf"), 0
    for _ in range(runs):
        sink = CountingSink()
        pipeline = Pipeline(KeyStore(), [sink])
        start = time.perf_counter()
        for frame in frames:
            pipeline.frame(frame)
        pipeline.finish()
        best = min(best, time.perf_counter() - start)
        count = sink.count
    return best, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    texts = messages(args.messages)
    cases = {"SIP over TCP": tcp_frames([(0, b"".join(texts))])}
    for deflate in (False, True):
        extension = [PerMessageDeflate(False, False, 15, 15)] if deflate else None
        data = b"".join(
            WsFrame(Opcode.TEXT, t).serialize(mask=True, extensions=extension) for t in texts
        )
        name = "SIP over ws, permessage-deflate" if deflate else "SIP over ws, uncompressed"
        cases[name] = tcp_frames([(0, REQUEST), (1, response(deflate)), (0, data)])
    size = sum(len(t) for t in texts)
    print(f"{args.messages} SIP messages, {size / 1e6:.1f} MB of SIP, best of {args.runs}")
    for name, frames in cases.items():
        seconds, count = run(frames, args.runs)
        assert count == args.messages, (name, count)
        print(
            f"  {name:34} {seconds:6.2f} s  {count / seconds:9,.0f} messages/s  "
            f"{len(frames)} packets"
        )


if __name__ == "__main__":
    main()
