"""Bounds an attacker cannot walk past, end to end: SIP messages buffered by the pipeline, the
key store, the problem reporter, and the counters that show each bound in the stats summary
and /metrics.  (TCP reassembly: test_net.py; SIP framing alone: test_sip_framing.py; key-log
sources: test_key_sources.py.)"""

from __future__ import annotations

import io
import os
import struct
import tracemalloc

import pytest

from captagent_tls import report
from captagent_tls.capture import Frame
from captagent_tls.message import Message
from captagent_tls.metrics import AgentCollector
from captagent_tls.net.packet import TCP_ACK
from captagent_tls.net.tcp import Flow
from captagent_tls.pipeline import Pipeline
from captagent_tls.report import ProblemReporter, format_stats
from captagent_tls.sinks import Sink
from captagent_tls.tls.events import TlsProblem
from captagent_tls.tls.keylog import load_key_log
from captagent_tls.tls.keys import KeyStore

CLIENT = bytes([10, 0, 0, 1])
SERVER = bytes([10, 0, 0, 2])
LINKTYPE_RAW = 101
PSH = 0x08


class Collect(Sink):
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def emit(self, message: Message) -> None:
        self.messages.append(message)

    def close(self) -> None:
        pass


def tcp_frame(sport: int, seq: int, payload: bytes, ts: int) -> Frame:
    tcp = struct.pack("!HHIIBBHHH", sport, 5060, seq, 1, 5 << 4, TCP_ACK | PSH, 65535, 0, 0)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0, 64, 6, 0, CLIENT, SERVER
    )
    return Frame(ts, LINKTYPE_RAW, ip + tcp + payload)


INVITE = b"INVITE sip:bob@example.test SIP/2.0\r\nCall-ID: after@x\r\nContent-Length: 0\r\n\r\n"


def huge_body_flood(flows: int, body: int, chunk: int = 60_000):
    """Each flow (unencrypted SIP over TCP) sends a MESSAGE with a ``body``-byte body in
    ``chunk``-byte segments, interleaved across flows, then an INVITE."""
    heads = {}
    for n in range(flows):
        heads[n] = (
            b"MESSAGE sip:bob@example.test SIP/2.0\r\nCall-ID: big-%d@x\r\n"
            b"Content-Length: %d\r\n\r\n" % (n, body)
        )
    sent = dict.fromkeys(range(flows), 0)
    ts = 1_000_000_000
    for n in range(flows):
        ts += 1
        yield tcp_frame(41000 + n, 1000, heads[n], ts)
        sent[n] = len(heads[n])
    filler = b"z" * chunk
    for offset in range(0, body, chunk):
        for n in range(flows):
            piece = filler[: min(chunk, body - offset)]
            ts += 1
            yield tcp_frame(41000 + n, 1000 + sent[n], piece, ts)
            sent[n] += len(piece)
    for n in range(flows):
        ts += 1
        yield tcp_frame(41000 + n, 1000 + sent[n], INVITE, ts)


def test_eight_flows_with_fifteen_mib_bodies_hold_nothing_of_them():
    """The issue's case: 8 flows x 15 MiB of SIP body took 182 MB.  Each message is over the
    per-message bound, so it is dropped as it streams by; what follows it is framed."""
    sink = Collect()
    pipeline = Pipeline(KeyStore(), [sink])
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for frame in huge_body_flood(8, 15 << 20):
            pipeline.frame(frame)
            assert pipeline.sip_budget.held == 0
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    pipeline.finish()
    budget = pipeline.sip_budget
    assert budget.oversized_messages == 8
    assert budget.dropped_bytes > 8 * (15 << 20)
    assert [m.payload for m in sink.messages] == [INVITE] * 8  # nothing of the big ones
    assert peak < 4 << 20, peak  # a frame or two in flight, not the bodies
    text = format_stats(pipeline.counters(), [sink])
    assert "SIP messages dropped: 8 over 1024 KiB, 0 while incomplete messages held 64 MiB" in text


def test_all_flows_together_hold_at_most_the_sip_budget():
    """Messages under the per-message bound, but many at once: the shared budget stops them."""
    from captagent_tls.pipeline import PipelineOptions

    sink = Collect()
    options = PipelineOptions(max_sip_message_bytes=1 << 20, max_sip_held_bytes=2 << 20)
    pipeline = Pipeline(KeyStore(), [sink], options=options)
    most = 0
    for frame in huge_body_flood(8, 900_000):
        pipeline.frame(frame)
        most = max(most, pipeline.sip_budget.held)
    pipeline.finish()
    budget = pipeline.sip_budget
    assert most <= 2 << 20
    assert budget.over_budget_messages >= 5  # 2 MiB holds two of the 900 kB messages
    assert budget.oversized_messages == 0
    delivered = [m.payload for m in sink.messages]
    assert delivered.count(INVITE) == 8
    assert len(delivered) - 8 == 8 - budget.over_budget_messages  # the others came through
    assert budget.held == 0


# -- key store -----------------------------------------------------------------------------


def client_random_line(n: int, label: str = "CLIENT_RANDOM") -> str:
    return f"{label} {n:064x} {n:096x}\n"


def test_key_store_keeps_the_newest_entries_and_counts_evictions():
    keys = KeyStore(max_entries=4)
    generation = keys.generation
    text = "".join(client_random_line(n) for n in range(1, 4))
    text += f"RSA {'11' * 8} {'22' * 48}\n"
    text += f"RSA Session-ID:{'33' * 32} Master-Key:{'44' * 48}\n"
    text += client_random_line(2)  # an entry already held: updated, not added
    text += client_random_line(9, "CLIENT_HANDSHAKE_TRAFFIC_SECRET")
    result = load_key_log(text, keys)
    assert result.added == 7 and keys.generation == generation + 1
    assert keys.entries == 4 and keys.evictions == 2  # client randoms 1 and 2, oldest first
    assert keys.secrets_for(bytes.fromhex(f"{1:064x}")) is None
    assert keys.secrets_for(bytes.fromhex(f"{2:064x}")) is None
    assert keys.secrets_for(bytes.fromhex(f"{3:064x}")).master_secret == bytes.fromhex(f"{3:096x}")
    assert keys.pms_by_encrypted_prefix[b"\x11" * 8] == b"\x22" * 48
    assert keys.master_by_session_id[b"\x33" * 32] == b"\x44" * 48
    tls13 = keys.secrets_for(bytes.fromhex(f"{9:064x}")).tls13
    assert tls13["CLIENT_HANDSHAKE_TRAFFIC_SECRET"] == bytes.fromhex(f"{9:096x}")
    load_key_log(client_random_line(10) + client_random_line(11), keys)
    assert keys.evictions == 4 and keys.entries == 4
    assert keys.secrets_for(bytes.fromhex(f"{3:064x}")) is None
    assert b"\x11" * 8 not in keys.pms_by_encrypted_prefix  # the RSA line came next
    assert b"\x33" * 32 in keys.master_by_session_id


def test_an_entry_without_tls13_secrets_shares_one_empty_mapping():
    keys = KeyStore()
    load_key_log(client_random_line(1) + client_random_line(2), keys)
    one, two = (keys.secrets_for(bytes.fromhex(f"{n:064x}")) for n in (1, 2))
    assert one.tls13 is two.tls13 and not one.tls13
    with pytest.raises(TypeError):
        one.tls13["x"] = b""  # type: ignore[index]  # read-only: nobody can fill it for all


TLS13 = (
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    "CLIENT_TRAFFIC_SECRET_0",
    "SERVER_TRAFFIC_SECRET_0",
    "EXPORTER_SECRET",
)


@pytest.mark.parametrize(("kind", "most_bytes"), [("tls12", 340), ("tls13", 880)])
def test_memory_per_key_store_entry_is_what_max_key_entries_assumes(kind, most_bytes):
    """tls/keys.py sizes MAX_KEY_ENTRIES from ~320 bytes per CLIENT_RANDOM entry and ~830
    per TLS 1.3 client random with five secrets."""
    count = 50_000
    lines = []
    for _ in range(count):
        client_random = os.urandom(32).hex()
        labels = ("CLIENT_RANDOM",) if kind == "tls12" else TLS13
        lines += [f"{label} {client_random} {os.urandom(48).hex()}" for label in labels]
    text = "\n".join(lines)
    keys = KeyStore()
    tracemalloc.start()
    try:
        load_key_log(text, keys)
        used = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert keys.entries == count
    assert used / count <= most_bytes, used / count


# -- problem reporter ----------------------------------------------------------------------


def problem(port: int, ts_s: float, kind: str = "no_key") -> TlsProblem:
    flow = Flow(((CLIENT, 40000), (SERVER, port)), syn_seen=True)
    return TlsProblem(
        flow, kind, f"no key for server 10.0.0.2:{port}", int(ts_s * 1e9), f"10.0.0.2:{port}"
    )


def test_problems_are_printed_once_each_then_counted_per_kind():
    out = io.StringIO()
    reporter = ProblemReporter(out)
    for port in range(1000, 1100):  # 100 servers in 10 s of capture time
        reporter.report(problem(port, (port - 1000) / 10))
        reporter.report(problem(port, (port - 1000) / 10))  # the same again: never printed
    reporter.report(problem(7, 1, kind="other"))
    lines = out.getvalue().splitlines()
    assert len(lines) == report.PROBLEMS_IN_FULL + 1
    assert "counted and summed up" in lines[report.PROBLEMS_IN_FULL - 1]
    reporter.report(problem(2000, 70))  # a minute after the first one counted: a summary
    summary = out.getvalue().splitlines()[-1]
    assert summary.startswith(
        f"captagent-tls: {100 - report.PROBLEMS_IN_FULL + 1} more "
        "problem(s) of the same kind (no_key)"
    )
    assert summary.endswith("no key for server 10.0.0.2:2000")
    reporter.report(problem(2001, 71))
    reporter.flush()
    assert out.getvalue().splitlines()[-1].startswith("captagent-tls: 1 more problem(s)")
    assert reporter.suppressed == 100 - report.PROBLEMS_IN_FULL + 2


def test_the_problems_remembered_are_bounded(monkeypatch):
    monkeypatch.setattr(report, "SEEN_PROBLEMS", 50)
    reporter = ProblemReporter(io.StringIO())
    for port in range(10_000):
        reporter.report(problem(port, 0))
    assert len(reporter._seen) == 50  # noqa: SLF001


# -- /metrics ------------------------------------------------------------------------------


def test_metrics_show_each_bound():
    keys = KeyStore(max_entries=1)
    load_key_log(client_random_line(1) + client_random_line(2), keys)
    pipeline = Pipeline(keys, [Collect()])
    for frame in huge_body_flood(1, 2 << 20):
        pipeline.frame(frame)
    samples = {}
    for family in AgentCollector(pipeline.counters).collect():
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert samples[("captagent_tls_sip_messages_dropped_total", (("bound", "message_size"),))] == 1
    assert samples[("captagent_tls_sip_dropped_bytes_total", ())] > 2 << 20
    assert samples[("captagent_tls_sip_held_bytes", ())] == 0
    assert samples[("captagent_tls_key_log_evictions_total", ())] == 1
    assert samples[("captagent_tls_key_log_secrets", ())] == 1
    assert ("captagent_tls_key_log_connections_closed_total", (("reason", "idle"),)) in samples
    assert ("captagent_tls_tcp_buffer_overflows_total", ()) in samples
