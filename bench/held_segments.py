"""TCP reassembly under held-segment floods: time and memory of the two attacks in the issue.

1. **Duplicate ACKs while segments are held**: a handshake, then the client's first data byte
   is missing and N one-byte segments arrive after it, each followed by a duplicate ACK from
   the server (acknowledging only up to the hole, so no gap is declared).  Then the missing
   byte arrives and the whole stream drains.  Before the fix every ACK scanned every held
   segment: 40,000 segments took 98 s.
2. **Memory per held segment**: N two-byte segments, each after a one-byte hole, held with
   the byte cap out of the way, measured with tracemalloc (the Python heap the reassembler
   allocated for them).  This is the figure behind ``HELD_SEGMENT_OVERHEAD`` in
   ``net/tcp.py``.  Then the same flood with the default cap (``--max-flow-buffer``, 4 MiB),
   to show what the cap now bounds.

    python -m bench.held_segments [--segments 40000] [--memory-segments 1000000]

To measure another revision's code: ``PYTHONPATH=bench/out/rev-src/src python bench/...``
after ``bench/run.py --rev REV`` has exported it (or ``git archive REV src | tar -x -C DIR``).
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc

import captagent_tls.net.tcp as tcp_module
from captagent_tls.net.packet import TCP_ACK, TCP_SYN, Segment
from captagent_tls.net.tcp import StreamData, TcpReassembler

CLIENT = (bytes([10, 0, 0, 1]), 40000)
SERVER = (bytes([10, 0, 0, 2]), 5061)
ISN, SERVER_ISN = 1000, 5000


def client(seq: int, data: bytes = b"", flags: int = TCP_ACK, ack: int = 0) -> Segment:
    return Segment(CLIENT[0], SERVER[0], CLIENT[1], SERVER[1], seq, ack, flags, data)


def server(seq: int, data: bytes = b"", flags: int = TCP_ACK, ack: int = 0) -> Segment:
    return Segment(SERVER[0], CLIENT[0], SERVER[1], CLIENT[1], seq, ack, flags, data)


def handshake(tcp: TcpReassembler) -> None:
    tcp.segment(client(ISN, flags=TCP_SYN), 1)
    tcp.segment(server(SERVER_ISN, flags=TCP_SYN | TCP_ACK, ack=ISN + 1), 2)
    tcp.segment(client(ISN + 1, ack=SERVER_ISN + 1), 3)


def duplicate_acks(count: int) -> None:
    tcp = TcpReassembler(max_direction_bytes=1 << 40)
    handshake(tcp)
    hole = ISN + 1
    started = time.perf_counter()
    for n in range(count):
        tcp.segment(client(hole + 1 + n, b"x"), 10 + n)
        tcp.segment(server(SERVER_ISN + 1, ack=hole), 10 + n)  # duplicate ACK: hole not acked
    held = time.perf_counter() - started
    started = time.perf_counter()
    events = tcp.segment(client(hole, b"!"), 10 + count)
    drained = time.perf_counter() - started
    stream = b"".join(e.data for e in events if type(e) is StreamData)
    assert stream == b"!" + b"x" * count, "wrong stream"
    print(
        f"duplicate ACKs: {count:,} one-byte segments held, each followed by a duplicate "
        f"ACK: {held:.2f} s ({held / count * 1e6:.1f} us per segment+ACK); "
        f"drain when the hole fills: {drained:.3f} s"
    )


def memory(count: int, cap: int | None) -> None:
    tcp = TcpReassembler(max_direction_bytes=cap if cap is not None else 1 << 40)
    handshake(tcp)
    hole = ISN + 1
    # two bytes with a one-byte hole before each: every segment waits (one-byte bytes objects
    # are interned by CPython, so they would hide the cost of the bytes object)
    # payloads are views into the frame, as decode() gives them: holding one makes a copy
    segments = [client(hole + 1 + 3 * n, memoryview(b"%02d" % (n % 100))) for n in range(count)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for n, segment in enumerate(segments):
        tcp.segment(segment, 10 + n)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    half = next(iter(tcp._flows)).halves[0]  # noqa: SLF001 - the bench looks inside on purpose
    held = len(half.pending)
    label = "no cap" if cap is None else f"cap {cap:,} bytes"
    print(
        f"memory, {label}: {count:,} two-byte segments sent, {held:,} held, "
        f"{tcp.stats.buffer_overflows} overflows; heap grew {grown / 1e6:.1f} MB"
        + (
            f" = {grown / held - 2:.0f} bytes per held segment beyond its payload"
            if held and cap is None
            else ""
        )
        + f"; charged {half.pending_bytes:,} bytes"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=40_000)
    parser.add_argument("--memory-segments", type=int, default=1_000_000)
    args = parser.parse_args()
    print(f"net/tcp.py from {tcp_module.__file__}; Python {sys.version.split()[0]}")
    duplicate_acks(args.segments)
    memory(args.memory_segments, None)
    memory(args.memory_segments, 4 << 20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
