"""What the peers of a fixture capture really sent, per connection and direction.

The oracle's reference: every decrypted byte the pipeline emits must lie inside these
streams.  Built from the fixture's ground truth (tests/support/groundtruth.py): the messages
in send order, CRLF keep-alives at their offsets, and the messages the fixture damaged on
purpose (a tampered record, a lost segment): those were sent too, so a piece of them
that authenticates is no invention, though the exact fixture check (tests/test_fixtures.py)
makes sure they are not emitted from the unmutated capture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tests.support.groundtruth import GroundTruth, load_groundtruth

DIRECTIONS = ("c2s", "s2c")


def sent_stream(truth: GroundTruth, conn_index: int, direction: str) -> bytes:
    """Every application byte one side of one connection sent, in order: messages (the
    damaged ones too) with the keep-alives at their offsets."""
    conn = next(c for c in truth.connections if c.index == conn_index)
    keepalives = sorted(conn.extras[direction], key=lambda e: e[0])
    out = bytearray()
    clean = 0  # offset in the stream without the damaged messages, where keep-alives count
    pending = list(keepalives)
    for message in truth.messages:
        if message.conn != conn_index or message.direction != direction:
            continue
        while pending and pending[0][0] <= clean:
            out += pending.pop(0)[1]
        out += message.payload
        if not message.damage:
            clean += len(message.payload)
    for _, extra in pending:
        out += extra
    return bytes(out)


@dataclass
class SentStreams:
    """The allowed bytes of a fixture, for the "nothing invented" oracle."""

    #: (client port, server port, direction) -> stream
    by_connection: dict[tuple[int, int | None, str], bytes] = field(default_factory=dict)

    def candidates(self, client_port: int, server_port: int, direction: str) -> list[bytes]:
        """The streams a message of this connection and direction may come from: its own
        connection's when the endpoints name one, else those of every connection (a mutation
        changed the ports)."""
        own = [
            s
            for (c, srv, d), s in self.by_connection.items()
            if c == client_port and srv in (server_port, None) and d == direction
        ]
        if own:
            return own
        return [s for (_, _, d), s in self.by_connection.items() if d == direction]


def load_sent_streams(json_path: Path) -> tuple[GroundTruth, SentStreams]:
    truth = load_groundtruth(json_path)
    streams = SentStreams()
    for conn in truth.connections:
        for direction in DIRECTIONS:
            streams.by_connection[(conn.client_port, conn.server_port, direction)] = sent_stream(
                truth, conn.index, direction
            )
    return truth, streams
