"""The "nothing invented" oracle for what the pipeline emits.

For every message the pipeline hands its sinks:

* **Decrypted (transport "tls"), SIP or raw**: the payload must be a contiguous substring of
  what the fixture's peer really sent on that connection in that direction (``c2s`` when the
  message is marked as coming from the client), per the fixture's ground truth (see
  :mod:`fuzz.truth`).  The connection is the one whose client and server ports the message
  carries; when no fixture connection has those ports (a mutation rewrote them), the streams of
  every connection in that direction are allowed.  A mutated capture may lose bytes, so
  *fewer* messages are fine; a message glued together from two places of a stream, a message
  under the wrong direction, or bytes decrypted with the wrong key or IV are not.
* **Unencrypted (transport "tcp" or "udp")**: these are what was on the wire, mutations
  included, so they must be a contiguous substring of one gap-free piece of that direction's
  TCP stream as the capture itself carries it (a second, independent run of TCP reassembly
  over the same file: :func:`wire_pieces`), or of one UDP datagram (after IP reassembly).
  That TCP reassembly only ever delivers bytes of the segments, at their sequence
  positions, is checked on its own by the ``tcp`` target.

Plus, for an input that leaves the fixture unchanged: the SIP messages are exactly those
sent (the multiset of (client port, direction, payload)), as tests/test_fixtures.py checks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from captagent_tls.capture.files import CaptureReader
from captagent_tls.message import Message
from captagent_tls.net.ip import Defragmenter
from captagent_tls.net.packet import Datagram, Fragment, Segment, decode
from captagent_tls.net.tcp import StreamData, StreamGap, TcpReassembler
from fuzz.truth import SentStreams

Endpoint = tuple[bytes, int]
Pieces = dict[tuple[Endpoint, Endpoint], list[bytes]]


class OracleFailure(AssertionError):
    """The product did something the oracle forbids; ``check`` names which rule."""

    def __init__(self, check: str, detail: str):
        super().__init__(f"{check}: {detail}")
        self.check = check


def wire_pieces(path: str) -> Pieces:
    """Per (sender, receiver): the gap-free pieces of the TCP streams and the UDP datagrams
    that the capture file carries."""
    pieces: Pieces = {}
    current: dict[tuple[object, int], bytearray] = {}
    ends: dict[tuple[object, int], tuple[Endpoint, Endpoint]] = {}

    def close(key: tuple[object, int]) -> None:
        data = current.pop(key, None)
        if data:
            pieces.setdefault(ends[key], []).append(bytes(data))

    def on_events(events: Iterable[object]) -> None:
        for event in events:
            if isinstance(event, StreamData | StreamGap):
                flow = event.flow
                key = (flow, event.direction)  # (the dicts keep the flows: no id is reused)
                ends[key] = (flow.endpoint(event.direction), flow.endpoint(1 - event.direction))
                if isinstance(event, StreamData):
                    current.setdefault(key, bytearray()).extend(event.data)
                else:
                    close(key)

    tcp = TcpReassembler()
    defrag = Defragmenter()
    try:
        with CaptureReader(path) as reader:
            for frame in reader:
                packet = decode(frame.linktype, frame.data)
                if isinstance(packet, Fragment):
                    packet = defrag.add(packet, frame.ts_ns)
                if isinstance(packet, Segment):
                    on_events(tcp.segment(packet, frame.ts_ns))
                elif isinstance(packet, Datagram):
                    pieces.setdefault(
                        ((packet.src, packet.sport), (packet.dst, packet.dport)), []
                    ).append(bytes(packet.payload))
    except Exception:  # the pipeline run itself reports what the reader cannot take
        pass
    on_events(tcp.flush())
    for key in list(current):
        close(key)
    return pieces


def check_messages(messages: list[Message], sent: SentStreams, wire: Callable[[], Pieces]) -> None:
    """Raise :class:`OracleFailure` for the first message that was never sent."""
    pieces: Pieces | None = None
    for message in messages:
        direction = "c2s" if message.from_client else "s2c"
        if message.transport == "tls":
            client, server = (
                (message.src, message.dst) if message.from_client else (message.dst, message.src)
            )
            streams = sent.candidates(client[1], server[1], direction)
            if not any(message.payload in stream for stream in streams):
                raise OracleFailure(
                    "invented-tls-bytes",
                    f"{'SIP' if message.is_sip else 'raw'} {direction} message on client port "
                    f"{client[1]} ({message.tls_version} {message.cipher_suite}) is not in what "
                    f"that peer sent: {message.payload[:80]!r}",
                )
        else:
            if pieces is None:
                pieces = wire()
            candidates = pieces.get((message.src, message.dst), [])
            if not any(message.payload in piece for piece in candidates):
                raise OracleFailure(
                    "invented-plain-bytes",
                    f"unencrypted {message.transport} message {direction} is not in one piece "
                    f"of what the capture carries: {message.payload[:80]!r}",
                )


def received(messages: list[Message]) -> Counter[tuple[int, str, bytes]]:
    """(client port, direction, payload) of the SIP messages, as support.cli.received."""
    found: Counter[tuple[int, str, bytes]] = Counter()
    for message in messages:
        if message.is_sip:
            client_port = message.src[1] if message.from_client else message.dst[1]
            found[(client_port, "c2s" if message.from_client else "s2c", message.payload)] += 1
    return found
