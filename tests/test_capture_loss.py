"""Lose only what was cut, and tell the truth about it.

One TCP segment of a handshake is removed from a real capture (the peers received it; the
capture did not), the way a busy tap loses packets.  What could still be decrypted must be,
nothing may be invented, the explanation must name what happened, and every session must land
in exactly one counter of the summary.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from captagent_tls.tls.context import TlsStats
from tests.support.groundtruth import load_groundtruth
from tests.support.inprocess import key_store, read_frames, run_frames, tls_segments
from tests.support.paths import FIXTURES


@dataclass(frozen=True)
class Cut:
    fixture: str
    what: tuple[str, ...]  # the records of the removed segment, as tls_segments names them
    outcome: str  # "all": every message decrypts; else the reason the connection is lost
    says: str = ""  # what the explanation must contain
    never_says: str = ""


CUTS = [
    # RSA key exchange (the server's key)
    Cut(
        "tls12-aes256gcm-noems",
        ("HS:1",),
        "handshake_lost",
        "the ClientHello was lost in a capture gap",
        "started before the capture",
    ),
    Cut(
        "tls12-aes256gcm-noems",
        ("HS:2", "HS:11", "HS:14"),
        "handshake_lost",
        "the ServerHello was lost in a capture gap",
        "started before the capture",
    ),
    Cut(
        "tls12-aes256gcm-noems",
        ("HS:16", "CCS", "HS*"),
        "key_exchange_lost",
        "ClientKeyExchange was lost in a capture gap",
        "resumed session",
    ),
    Cut("tls12-aes256gcm-noems", ("HS:4", "CCS", "HS*"), "all", "", "no key for server"),
    Cut("tls12-aes128gcm-ems", ("HS:4", "CCS", "HS*"), "all", "", "no key for server"),
    Cut("rsa-tls12-aes-cbc", ("HS:4", "CCS", "HS*"), "all", "", "no key for server"),
    # key logs (ECDHE): the master secret comes by client random, whatever was lost after
    # the hellos
    Cut("keylog-tls12-ecdhe", ("HS:16", "CCS", "HS*"), "all", "", "no entry for this session"),
    Cut("keylog-tls12-ecdhe", ("HS:4", "CCS", "HS*"), "all", "", "no entry for this session"),
    Cut(
        "keylog-tls12-ecdhe",
        ("HS:1",),
        "handshake_lost",
        "the ClientHello was lost in a capture gap",
        "started before the capture",
    ),
    # TLS 1.3: the client's Finished lost; its application records use the next keys
    Cut("keylog-tls13-suites", ("CCS", "AD"), "all", "", "no entry for this session"),
]


def first_connection_segment(frames, what: tuple[str, ...]):
    segments = tls_segments(frames)
    client_port = segments[0].sport
    for segment in segments:
        if client_port in (segment.sport, segment.dport) and segment.records == what:
            return segment
    raise AssertionError(f"no segment {what}")


def sessions_counted(stats: TlsStats) -> int:
    return (
        stats.sessions_full
        + stats.sessions_resumed
        + stats.sessions_incomplete
        + sum(stats.undecryptable.values())
    )


@pytest.mark.parametrize(
    "cut", [pytest.param(c, id=f"{c.fixture}-{'+'.join(c.what)}") for c in CUTS]
)
def test_a_lost_handshake_segment_costs_only_what_it_carried(cut: Cut):
    truth = load_groundtruth(FIXTURES / f"{cut.fixture}.json")
    frames = read_frames(FIXTURES / f"{cut.fixture}.pcap")
    lost = first_connection_segment(frames, cut.what)
    kept = [f for i, f in enumerate(frames) if i != lost.index]
    out, pipeline = run_frames(kept, key_store(truth.keys, truth.keylog))
    stats = pipeline.tls.stats

    ports = {c.client_port for c in truth.connections}
    cut_conn = truth.connection_by_client_port(lost.sport if lost.sport in ports else lost.dport)
    sent = truth.sent()
    got = [m.payload for m in out.messages if m.is_sip]
    every_sent = {payload for (_, _, payload) in sent}
    assert all(payload in every_sent for payload in got)  # nothing invented
    others = [
        m
        for c in truth.connections
        if c is not cut_conn
        for d in ("c2s", "s2c")
        for m in c.messages(d)
    ]
    assert sorted(m for m in got if m in set(others)) == sorted(others)
    mine = [m for d in ("c2s", "s2c") for m in cut_conn.messages(d)]
    if cut.outcome == "all":
        assert sorted(m for m in got if m in set(mine)) == sorted(mine)
        assert stats.records_failed == 0
    else:
        assert not any(m in set(mine) for m in got)
        assert stats.undecryptable.get(cut.outcome) == 1, stats.undecryptable
    text = out.problem_text()
    if cut.says:
        assert cut.says in text
    if cut.never_says:
        assert cut.never_says not in text
    assert sessions_counted(stats) == stats.connections == len(truth.connections)


def test_both_flights_lost_the_session_is_still_counted_and_decrypted():
    """The client's ClientKeyExchange/ChangeCipherSpec/Finished and the server's
    ChangeCipherSpec/Finished both lost: with a key log every message still decrypts, and the
    session is in a counter."""
    truth = load_groundtruth(FIXTURES / "keylog-tls12-ecdhe.json")
    frames = read_frames(FIXTURES / "keylog-tls12-ecdhe.pcap")
    lost = {
        first_connection_segment(frames, ("HS:16", "CCS", "HS*")).index,
        first_connection_segment(frames, ("HS:4", "CCS", "HS*")).index,
    }
    out, pipeline = run_frames(
        [f for i, f in enumerate(frames) if i not in lost], key_store(truth.keys, truth.keylog)
    )
    want = sorted(m for c in truth.connections for d in ("c2s", "s2c") for m in c.messages(d))
    assert sorted(m.payload for m in out.messages if m.is_sip) == want
    stats = pipeline.tls.stats
    assert sessions_counted(stats) == stats.connections == len(truth.connections)
    assert stats.sessions_full == len(truth.connections)


def handshake_segments(frames):
    """Per connection (client port), its segments up to its first application data."""
    per_port: dict[int, list] = {}
    done: set[int] = set()
    for segment in tls_segments(frames):
        port = min(segment.sport, segment.dport)  # the server's port is the higher here
        client = segment.sport if segment.sport != port else segment.dport
        client = max(segment.sport, segment.dport) if port in (5061, 15061) else client
        if client in done:
            continue
        if "AD" in segment.records and "HS:" not in " ".join(segment.records):
            done.add(client)
            continue
        per_port.setdefault(client, []).append(segment)
    return per_port


LOSS_FIXTURES = sorted(
    p.stem
    for p in FIXTURES.glob("*.pcap")
    if p.with_suffix(".json").exists()
    and "lost" not in p.stem
    and "tampered" not in p.stem
    and "late-start" not in p.stem
)


@pytest.mark.parametrize("fixture", LOSS_FIXTURES)
def test_any_lost_handshake_segment_invents_nothing_and_keeps_every_other_connection(fixture):
    """Every segment of the first connection's handshake, removed in turn: nothing invented,
    no internal error, the other connections whole, every session in one counter, and never
    'started before the capture' for a connection whose SYN is in it."""
    truth = load_groundtruth(FIXTURES / f"{fixture}.json")
    frames = read_frames(FIXTURES / f"{fixture}.pcap")
    keys = key_store(truth.keys, truth.keylog)
    ports = {c.client_port for c in truth.connections}
    every_sent = {payload for (_, _, payload) in truth.sent()}
    by_client = handshake_segments(frames)
    first = next((port for port in by_client if port in ports), None)
    if first is None:
        pytest.skip("no handshake segments found")
    # (a resumed connection needs the session of the first: it is not independent of it)
    others = sorted(
        m
        for c in truth.connections
        if c.client_port != first and c.expect_decrypt and not c.reused
        for d in ("c2s", "s2c")
        for m in c.messages(d)
    )
    for lost in by_client[first]:
        out, pipeline = run_frames([f for i, f in enumerate(frames) if i != lost.index], keys)
        got = [m.payload for m in out.messages if m.is_sip]
        where = f"{fixture} without {lost.records}"
        assert all(payload in every_sent for payload in got), where
        assert pipeline.stats.internal_errors == 0, where
        assert sorted(m for m in got if m in set(others)) == others, where
        stats = pipeline.tls.stats
        assert sessions_counted(stats) >= stats.connections, where
        assert "started before the capture" not in out.problem_text(), where
