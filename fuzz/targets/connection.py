"""tls/connection.py through ``TlsTracker``: the record layer, handshakes and decryption,
fed the byte streams that TCP reassembly would deliver, without packets in between.

Input: a fixture capture and one of its connections; whether keys "may still arrive" (the
live mode, where records wait for keys and are replayed when they come) and when the key log
is loaded (before, or after some chunk: a live key log written late); up to four TLS stream
mutations (those of the pipeline target, :mod:`fuzz.mutate`); then the two streams, cut
where the capture's segments were cut and interleaved as captured, with up to four chunk
operations: a chunk lost (a ``gap``), a chunk split, time jumping past the key wait.

Oracle: no exception; decrypted application data is a piece of what that side really sent
(the fixture's ground truth); bytes passed on as not-TLS are a piece of one gap-free run of
what was fed in that direction; nothing after ``ConnectionDone``.
"""

from __future__ import annotations

from captagent_tls.net.tcp import Flow
from captagent_tls.tls.events import PLAINTEXT, AppData, ConnectionDone
from captagent_tls.tls.keylog import load_key_log
from captagent_tls.tls.keys import KeyStore
from captagent_tls.tls.tracker import TlsTracker
from fuzz import mutate
from fuzz.bytesource import ByteSource
from fuzz.oracle import OracleFailure

MAX_LEN = 512
SLOW_SECONDS = 10.0


def _chunks(work: mutate.Work, conn_index: int) -> list[tuple[int, bytes]]:
    """The connection's two (edited) streams, cut at the segments' boundaries, in capture
    order: what TCP reassembly hands the TLS stage."""
    seed = work.seed
    cuts: list[set[int]] = [set(), set()]
    first_packet: list[dict[int, int]] = [{}, {}]
    for index, info in enumerate(seed.infos):
        if info.conn != conn_index or info.start < 0:
            continue
        _, points = work.stream(conn_index, info.direction)
        start, end = points[info.start], points[info.end]
        if end > start:
            cuts[info.direction].update((start, end))
            first_packet[info.direction].setdefault(start, index)
    out: list[tuple[int, int, bytes]] = []
    for direction in (0, 1):
        buf, _ = work.stream(conn_index, direction)
        bounds = sorted(c for c in cuts[direction] | {0, len(buf)} if 0 <= c <= len(buf))
        order = 0
        for a, b in zip(bounds, bounds[1:], strict=False):
            order = first_packet[direction].get(a, order)
            if b > a:
                out.append((order, direction, bytes(buf[a:b])))
    out.sort(key=lambda item: (item[0], item[1]))
    return [(direction, chunk) for _, direction, chunk in out]


def one_input(data: bytes) -> None:
    src = ByteSource(data)
    all_seeds = mutate.seeds()
    seed = all_seeds[src.below(len(all_seeds))]
    conn_index = src.below(len(seed.conns))
    keys_may_arrive = src.flag()
    keylog_after = src.below(64) if seed.keylog and src.flag() else -1
    work = mutate.Work(seed, key_paths=list(seed.key_paths), keylog=seed.keylog)
    for _ in range(src.below(5)):
        op = mutate.STREAM_OPS[src.below(len(mutate.STREAM_OPS))]
        op(work, ByteSource(src.sized_bytes(48)))
    chunks: list[tuple[str, int, bytes]] = [("data", d, c) for d, c in _chunks(work, conn_index)]
    for _ in range(src.below(5)):
        if not chunks:
            break
        at = src.below(len(chunks))
        kind, direction, chunk = chunks[at]
        how = src.below(3)
        if how == 0:
            chunks[at] = ("gap", direction, b"")
        elif how == 1 and len(chunk) > 1:
            cut = 1 + src.below(len(chunk) - 1)
            chunks[at : at + 1] = [(kind, direction, chunk[:cut]), (kind, direction, chunk[cut:])]
        else:
            chunks.insert(at, ("wait", direction, b""))

    sent = seed.sent
    conn = seed.conns[conn_index]
    keys = KeyStore()
    for key in work.rsa_keys_loaded():
        keys.add_rsa_key(key, "fixture key")
    if seed.keylog and keylog_after < 0:
        load_key_log(seed.keylog, keys)
    tracker = TlsTracker(keys, keys_may_arrive=keys_may_arrive)
    flow = Flow((conn.client, conn.server), syn_seen=True)
    fed: list[list[bytearray]] = [[bytearray()], [bytearray()]]
    done = False
    ts = 1_000_000_000

    def check(events: list[object]) -> None:
        nonlocal done
        for event in events:
            if done:
                raise OracleFailure("tls-event-after-done", type(event).__name__)
            if isinstance(event, ConnectionDone):
                done = True
            if not isinstance(event, AppData):
                continue
            if event.info is PLAINTEXT:
                if not any(event.data in piece for piece in fed[event.direction]):
                    raise OracleFailure("tls-invented-plain", f"{event.data[:60]!r}")
                continue
            label = "c2s" if event.from_client else "s2c"
            streams = sent.candidates(conn.client[1], conn.server[1], label)
            if not any(event.data in stream for stream in streams):
                raise OracleFailure(
                    "tls-invented-bytes", f"{label} {event.info.cipher_suite}: {event.data[:60]!r}"
                )

    for step, (kind, direction, chunk) in enumerate(chunks):
        ts += 1_000_000
        if step == keylog_after and seed.keylog:
            load_key_log(seed.keylog, keys)
            check(keys_changed(tracker, ts))
        if kind == "gap":
            fed[direction].append(bytearray())
            check(tracker.gap(flow, direction, ts))
        elif kind == "wait":
            ts += 11_000_000_000  # past the default key wait
            check(expire(tracker, ts))
        else:
            fed[direction][-1] += chunk
            check(tracker.data(flow, direction, chunk, ts))
    if seed.keylog and keylog_after >= len(chunks):
        load_key_log(seed.keylog, keys)
        check(keys_changed(tracker, ts))
    check(tracker.closed(flow, ts))
    check(give_up(tracker, ts))


def keys_changed(tracker: TlsTracker, ts: int) -> list[object]:
    """What the pipeline does when secrets are added: each waiting connection tries again."""
    if not tracker.keys_pending():
        return []
    return [e for conn in tracker.waiting() for e in tracker.retry(conn, ts)]


def expire(tracker: TlsTracker, ts: int) -> list[object]:
    return [e for conn in tracker.waiting() for e in tracker.expire(conn, ts)]


def give_up(tracker: TlsTracker, ts: int) -> list[object]:
    return [e for conn in tracker.waiting() for e in tracker.give_up(conn, ts)]


def seeds() -> list[bytes]:
    out = []
    for index, seed in enumerate(mutate.seeds()):
        for conn in range(min(len(seed.conns), 3)):
            out.append(bytes([index, conn, 0, 0]))  # as captured, keys known
            out.append(bytes([index, conn, 1, 1, 5, 0, 0]))  # live: key log after 5 chunks
    return out
