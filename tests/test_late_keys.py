"""Late keys under load: a busy TLS connection whose key-log lines arrive seconds late loses
nothing with the default hold limits, and a cap that is hit costs only what did not fit."""

from __future__ import annotations

from captagent_tls.pipeline import Pipeline, PipelineOptions
from captagent_tls.tls.context import HoldLimits
from captagent_tls.tls.keylog import load_key_log
from captagent_tls.tls.keys import KeyStore
from tests.support.inprocess import Collected
from tests.support.tlswriter import (
    APPLICATION_DATA,
    CHANGE_CIPHER_SPEC,
    TcpConversation,
    Tls12Session,
    record,
)

SECOND = 1_000_000_000
# one call as a SIP proxy's TLS connection carries it: INVITE with SDP, 100, 180, 200 with SDP,
# ACK, BYE, 200 (sizes as in the project's fixtures)
CALL = [("c", 900), ("s", 300), ("s", 400), ("s", 800), ("c", 350), ("c", 350), ("s", 300)]


def sip(index: int, size: int) -> bytes:
    head = (
        f"OPTIONS sip:{index}@example.com SIP/2.0\r\nCall-ID: call-{index}\r\nContent-Length: "
    ).encode()
    body_len = max(0, size - len(head) - 10)
    return head + f"{body_len}\r\n\r\n".encode() + b"v" * body_len


def busy_connection(calls_per_s: int, seconds: float) -> tuple[list, list[bytes], str]:
    """One TLS 1.2 ECDHE connection carrying calls at a steady rate: its frames, the messages
    sent, and its key-log line."""
    tcp = TcpConversation()
    session = Tls12Session()
    tcp.open()
    tcp.send(0, session.client_hello())
    tcp.send(1, session.server_flight())
    tcp.send(0, session.client_key_exchange())
    client, server = session.writers()
    tcp.send(0, record(CHANGE_CIPHER_SPEC, b"\x01") + session.finished(True, client))
    tcp.send(1, record(CHANGE_CIPHER_SPEC, b"\x01") + session.finished(False, server))
    start = tcp.ts_ns
    sent = []
    for call in range(int(calls_per_s * seconds)):
        tcp.at(start + call * SECOND // calls_per_s)
        for number, (who, size) in enumerate(CALL):
            message = sip(call * 10 + number, size)
            sent.append(message)
            direction = 0 if who == "c" else 1
            tcp.send(
                direction, (client if direction == 0 else server).seal(APPLICATION_DATA, message)
            )
            tcp.ack(1 - direction)
    tcp.close()
    return tcp.frames, sent, session.key_log_line()


def run_with_keys_at(
    frames, line: str, delay_s: float, hold: HoldLimits
) -> tuple[Collected, Pipeline, int]:
    keys = KeyStore()
    out = Collected()
    pipeline = Pipeline(
        keys, [out], out.problems.append, PipelineOptions(keys_may_arrive=True, hold=hold)
    )
    arrive = frames[0].ts_ns + int(delay_s * SECOND)
    most_held = 0
    for frame in frames:
        if line and frame.ts_ns >= arrive:
            load_key_log(line, keys)
            pipeline.keys_added(frame.ts_ns)
            line = ""
        pipeline.frame(frame)
        most_held = max(most_held, pipeline.tls.held_bytes)
    pipeline.finish()
    return out, pipeline, most_held


def test_100_calls_per_second_with_keys_nearly_10_s_late_lose_nothing_by_default():
    frames, sent, line = busy_connection(100, 12)
    out, pipeline, most_held = run_with_keys_at(frames, line, 9.5, HoldLimits())
    assert [m.payload for m in out.messages] == sent
    stats = pipeline.tls.stats
    assert stats.records_over_hold_cap == stats.records_expired == 0
    assert most_held < HoldLimits().max_bytes_per_flow
    assert not out.problems


def test_a_full_hold_cap_costs_only_the_records_that_did_not_fit():
    frames, sent, line = busy_connection(80, 8)
    out, pipeline, most_held = run_with_keys_at(
        frames, line, 5.0, HoldLimits(max_bytes_per_flow=1 << 20)
    )
    got = [m.payload for m in out.messages]
    stats = pipeline.tls.stats
    assert most_held <= 1 << 20
    assert stats.records_over_hold_cap > 0
    assert set(got) <= set(sent)
    # what did not fit is lost; everything before it and everything after the keys came is not
    assert len(sent) - len(got) == stats.records_over_hold_cap
    assert got[-1] == sent[-1]
    assert stats.records_failed == 0
    assert [p.kind for p in out.problems] == ["records_dropped"]
