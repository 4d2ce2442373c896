"""Specification tests of the TLS state machine, one rule each, on sessions written record by
record (tests/support/tlswriter.py) and fed through the pipeline with their key-log lines.

Each test is named for the rule it checks.  A record is emitted only when everything that
shaped its plaintext is proven (DESIGN.md, "authenticated or nothing").
"""

from __future__ import annotations

import hashlib
import os

from captagent_tls.pipeline import Pipeline
from captagent_tls.tls.keylog import load_key_log
from captagent_tls.tls.keys import KeyStore
from tests.support.inprocess import Collected
from tests.support.tlswriter import (
    ALERT,
    APPLICATION_DATA,
    CBC128_SHA,
    CHANGE_CIPHER_SPEC,
    ENCRYPTED_EXTENSIONS,
    GCM128_SHA256,
    HANDSHAKE,
    KEY_UPDATE,
    TLS12,
    TcpConversation,
    Tls12Session,
    Tls13Session,
    handshake_message,
    record,
)

CCS = record(CHANGE_CIPHER_SPEC, b"\x01")


def run(frames, key_log: str) -> tuple[Collected, Pipeline]:
    keys = KeyStore()
    load_key_log(key_log, keys)
    out = Collected()
    pipeline = Pipeline(keys, [out], out.problems.append)
    for frame in frames:
        pipeline.frame(frame)
    pipeline.finish()
    return out, pipeline


def sip(n: int, direction: str = "c") -> bytes:
    line = f"OPTIONS sip:{n}@example.com SIP/2.0" if direction == "c" else "SIP/2.0 200 OK"
    return f"{line}\r\nCall-ID: {n}\r\nContent-Length: 0\r\n\r\n".encode()


def tls12(
    session: Tls12Session,
    calls: int = 3,
    *,
    offered: list[int] | None = None,
    server_suite: int | None = None,
    server_version: int | None = None,
    tamper_finished: bool = False,
    lose_certificate: bool = False,
    client_records=None,
) -> tuple[TcpConversation, list[bytes]]:
    """A whole TLS 1.2 (or 1.0) connection: handshake, then ``calls`` request/response pairs.
    ``client_records(writer, n, message)`` may replace how the client's n-th record is
    written (to tamper with it)."""
    tcp = TcpConversation()
    tcp.open()
    tcp.send(0, session.client_hello(offered))
    flight = session.server_flight(server_suite, server_version)
    if lose_certificate:  # the Certificate travels in a segment of its own, which is lost
        hello_end = 5 + 4 + int.from_bytes(flight[6:9], "big")
        hello_record = record(HANDSHAKE, flight[5:hello_end], session.version)
        rest = record(HANDSHAKE, flight[hello_end:], session.version)
        tcp.send(1, hello_record)
        tcp.send(1, rest, lost=True)
    else:
        tcp.send(1, flight)
    tcp.send(0, session.client_key_exchange())
    client, server = session.writers()
    tcp.send(0, CCS + session.finished(True, client))
    tcp.send(1, CCS + session.finished(False, server, tamper=tamper_finished))
    sent = []
    for n in range(calls):
        request, response = sip(n, "c"), sip(n, "s")
        if client_records is not None:
            data = client_records(client, n, request)
        else:
            data = client.seal(APPLICATION_DATA, request)
        tcp.send(0, data)
        tcp.send(1, server.seal(APPLICATION_DATA, response))
        sent += [request, response]
    tcp.close()
    return tcp, sent


def test_a_record_failing_its_tag_is_dropped_and_the_next_one_decrypts():
    session = Tls12Session()

    def tamper_second(writer, n, message):
        sealed = writer.seal(APPLICATION_DATA, message)
        if n == 1:
            sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
        return sealed

    tcp, sent = tls12(session, client_records=tamper_second)
    out, pipeline = run(tcp.frames, session.key_log_line())
    assert [m.payload for m in out.messages] == [m for m in sent if m != sip(1, "c")]
    assert pipeline.tls.stats.records_failed == 1


def test_mac_then_encrypt_and_encrypt_then_mac_both_decrypt():
    for version in (0x0301, 0x0302, TLS12):
        for etm in (False, True):
            session = Tls12Session(suite=CBC128_SHA, etm=etm, version=version)
            tcp, sent = tls12(session)
            out, pipeline = run(tcp.frames, session.key_log_line())
            assert [m.payload for m in out.messages] == sent, (version, etm)
            assert pipeline.tls.stats.finished_verified == 2


def test_tls10_etm_after_a_failed_record_the_next_ones_iv_is_not_trusted():
    """SSLv3/TLS 1.0 chain the IV: a record's IV is the last cipher block of the record
    before.  With Encrypt-then-MAC the MAC covers a record's own ciphertext only, so when the
    record before failed, whoever altered it chose the next record's first plaintext block.
    That record is dropped (though it authenticates); the one after it has a proven IV."""
    session = Tls12Session(suite=CBC128_SHA, etm=True, version=0x0301)
    chosen = b"HACKED sips:bob@"

    def flip_last_block(writer, n, message):
        sealed = writer.seal(APPLICATION_DATA, message)
        if n == 1:  # steer the first block of the next record (n == 2) to the chosen text
            body = bytearray(sealed)
            last_block = len(body) - 20 - 16
            want = bytes(a ^ b for a, b in zip(sip(2, "c")[:16], chosen, strict=True))
            for i in range(16):
                body[last_block + i] ^= want[i]
            sealed = bytes(body)
        return sealed

    tcp, sent = tls12(session, calls=4, client_records=flip_last_block)
    out, pipeline = run(tcp.frames, session.key_log_line())
    got = [m.payload for m in out.messages]
    assert not any(chosen in payload for payload in got)
    assert sip(1, "c") not in got and sip(2, "c") not in got  # the failed one, the unproven one
    assert sip(3, "c") in got  # its IV is the last block of an authenticated record
    stats = pipeline.tls.stats
    assert (stats.records_failed, stats.records_unproven) == (1, 1)


def test_a_suite_the_client_did_not_offer_is_not_decrypted():
    """The ServerHello is altered to name another suite with the same MAC keys: believed, its
    'decryption' would pass ciphertext off as plaintext."""
    session = Tls12Session(suite=GCM128_SHA256)
    tcp, _ = tls12(session, offered=[CBC128_SHA])
    out, pipeline = run(tcp.frames, session.key_log_line())
    assert out.messages == []
    assert "which the ClientHello did not offer" in out.problem_text()
    assert pipeline.tls.stats.undecryptable == {"inconsistent_handshake": 1}


def test_a_version_above_what_the_client_offered_is_not_decrypted():
    session = Tls12Session(suite=CBC128_SHA, version=0x0301)
    tcp = TcpConversation()
    tcp.open()
    hello = bytearray(session.client_hello())
    hello[9:11] = b"\x03\x01"  # the client offers up to TLS 1.0 ...
    session.transcript[-1] = bytes(hello[5:])
    tcp.send(0, bytes(hello))
    tcp.send(1, session.server_flight(version=TLS12))  # ... the server says TLS 1.2
    tcp.close()
    out, pipeline = run(tcp.frames, session.key_log_line())
    assert "but the ClientHello offered up to TLSv1.0" in out.problem_text()
    assert pipeline.tls.stats.undecryptable == {"inconsistent_handshake": 1}


def test_a_finished_that_fails_with_nothing_lost_refutes_the_session():
    session = Tls12Session()
    tcp, _ = tls12(session, tamper_finished=True)
    out, pipeline = run(tcp.frames, session.key_log_line())
    assert out.messages == []
    assert "the server Finished message does not verify" in out.problem_text()
    assert pipeline.tls.stats.undecryptable == {"finished_mismatch": 1}


def test_a_finished_that_fails_after_a_capture_gap_is_explained_and_the_records_decrypt():
    session = Tls12Session()
    tcp, sent = tls12(session, lose_certificate=True)
    out, pipeline = run(tcp.frames, session.key_log_line())
    assert [m.payload for m in out.messages] == sent
    assert "handshake messages were lost in a capture gap" in out.problem_text()
    assert pipeline.tls.stats.sessions_full == 1


def test_the_first_protected_message_must_be_the_finished():
    """A resumed or altered session whose first protected handshake record opens to something
    else: the cipher it opens with is not the one the peers used."""
    session = Tls12Session()
    tcp = TcpConversation()
    tcp.open()
    tcp.send(0, session.client_hello())
    tcp.send(1, session.server_flight())
    tcp.send(0, session.client_key_exchange())
    client, server = session.writers()
    tcp.send(0, CCS + client.seal(HANDSHAKE, b"\x17" + os.urandom(15)))
    tcp.send(0, client.seal(APPLICATION_DATA, sip(0)))
    tcp.close()
    out, _ = run(tcp.frames, session.key_log_line())
    assert out.messages == []
    assert "is not its Finished message" in out.problem_text()


def test_an_alert_before_keys_is_counted_and_the_session_is_incomplete():
    session = Tls12Session()
    tcp = TcpConversation()
    tcp.open()
    tcp.send(0, session.client_hello())
    tcp.send(1, record(ALERT, b"\x02\x28"))  # handshake_failure
    tcp.close()
    out, pipeline = run(tcp.frames, "")
    stats = pipeline.tls.stats
    assert (stats.alerts, stats.sessions_incomplete) == (1, 1)
    assert out.messages == [] and out.problems == []


def tls13(
    session: Tls13Session,
    *,
    middlebox_ccs: bool = True,
    key_update_after: int = -1,
    calls: int = 3,
    hello_retry: bool = False,
) -> tuple[TcpConversation, list[bytes]]:
    tcp = TcpConversation()
    tcp.open()
    tcp.send(0, session.client_hello())
    if hello_retry:
        # the transcript then starts with message_hash(ClientHello1) (RFC 8446 §4.4.1)
        retry_random = hashlib.sha256(b"HelloRetryRequest").digest()
        tcp.send(1, session.server_hello(random=retry_random))
        first_hello, retry = session.transcript
        session.transcript = [handshake_message(254, hashlib.sha256(first_hello).digest()), retry]
        tcp.send(0, session.client_hello())
    server_hs = session.writer("SERVER_HANDSHAKE_TRAFFIC_SECRET")
    flight = session.server_hello() + (CCS if middlebox_ccs else b"")
    encrypted = session.handshake_message(ENCRYPTED_EXTENSIONS, b"\x00\x00") + session.finished(
        "SERVER_HANDSHAKE_TRAFFIC_SECRET"
    )
    tcp.send(1, flight + server_hs.seal(HANDSHAKE, encrypted))
    client_hs = session.writer("CLIENT_HANDSHAKE_TRAFFIC_SECRET")
    finished = session.finished("CLIENT_HANDSHAKE_TRAFFIC_SECRET")
    tcp.send(0, (CCS if middlebox_ccs else b"") + client_hs.seal(HANDSHAKE, finished))
    client = session.writer("CLIENT_TRAFFIC_SECRET_0")
    server = session.writer("SERVER_TRAFFIC_SECRET_0")
    sent = []
    for n in range(calls):
        tcp.send(0, client.seal(APPLICATION_DATA, sip(n, "c")))
        if n == key_update_after:
            tcp.send(0, client.seal(HANDSHAKE, bytes([KEY_UPDATE, 0, 0, 1, 0])))
            client.update()
        tcp.send(1, server.seal(APPLICATION_DATA, sip(n, "s")))
        sent += [sip(n, "c"), sip(n, "s")]
    tcp.close()
    return tcp, sent


def test_tls13_a_change_cipher_spec_is_ignored():
    for middlebox_ccs in (False, True):
        session = Tls13Session()
        tcp, sent = tls13(session, middlebox_ccs=middlebox_ccs)
        out, pipeline = run(tcp.frames, session.key_log())
        assert [m.payload for m in out.messages] == sent
        assert pipeline.tls.stats.finished_verified == 2


def test_tls13_key_update_rotates_one_direction():
    session = Tls13Session()
    tcp, sent = tls13(session, key_update_after=0)
    out, pipeline = run(tcp.frames, session.key_log())
    assert [m.payload for m in out.messages] == sent
    assert pipeline.tls.stats.key_updates == 1
    assert pipeline.tls.stats.records_failed == 0


def test_tls13_0rtt_without_its_secret_is_skipped_and_the_rest_decrypts():
    session = Tls13Session()
    tcp = TcpConversation()
    tcp.open()
    early = session.writer("CLIENT_EARLY_TRAFFIC_SECRET")
    tcp.send(0, session.client_hello(early_data=True) + early.seal(APPLICATION_DATA, sip(0)))
    server_hs = session.writer("SERVER_HANDSHAKE_TRAFFIC_SECRET")
    hello = session.server_hello()
    encrypted = session.handshake_message(
        ENCRYPTED_EXTENSIONS, b"\x00\x04\x00\x2a\x00\x00"
    ) + session.finished("SERVER_HANDSHAKE_TRAFFIC_SECRET")
    tcp.send(1, hello + server_hs.seal(HANDSHAKE, encrypted))
    tcp.send(0, early.seal(HANDSHAKE, session.handshake_message(5, b"")))  # EndOfEarlyData
    client_hs = session.writer("CLIENT_HANDSHAKE_TRAFFIC_SECRET")
    tcp.send(0, client_hs.seal(HANDSHAKE, session.finished("CLIENT_HANDSHAKE_TRAFFIC_SECRET")))
    client = session.writer("CLIENT_TRAFFIC_SECRET_0")
    tcp.send(0, client.seal(APPLICATION_DATA, sip(1)))
    tcp.close()
    out, pipeline = run(tcp.frames, session.key_log(without=("CLIENT_EARLY_TRAFFIC_SECRET",)))
    assert [m.payload for m in out.messages] == [sip(1)]
    stats = pipeline.tls.stats
    assert stats.early_data_skipped == 2 and stats.records_failed == 0
    assert stats.finished_verified == 2  # EndOfEarlyData, unseen, is still in the transcript

    out, pipeline = run(tcp.frames, session.key_log())  # with the early secret: all of it
    assert [m.payload for m in out.messages] == [sip(0), sip(1)]


def test_tls13_a_hello_retry_request_rewrites_the_transcript_hash():
    """After a HelloRetryRequest the transcript starts with message_hash(ClientHello1): the
    Finished messages verify only if that is followed."""
    session = Tls13Session()
    tcp, sent = tls13(session, hello_retry=True)
    out, pipeline = run(tcp.frames, session.key_log())
    assert [m.payload for m in out.messages] == sent
    assert pipeline.tls.stats.finished_verified == 2
    assert pipeline.tls.stats.finished_failed == 0


def test_tls12_a_gap_in_the_application_records_resyncs_on_the_next_record():
    session = Tls12Session()
    tcp = TcpConversation()
    tcp.open()
    tcp.send(0, session.client_hello())
    tcp.send(1, session.server_flight())
    tcp.send(0, session.client_key_exchange())
    client, server = session.writers()
    tcp.send(0, CCS + session.finished(True, client))
    tcp.send(1, CCS + session.finished(False, server))
    for n in range(6):
        tcp.send(0, client.seal(APPLICATION_DATA, sip(n)), lost=n in (1, 2))
        tcp.ack(1)
    tcp.close()
    out, pipeline = run(tcp.frames, session.key_log_line())
    assert [m.payload for m in out.messages] == [sip(n) for n in (0, 3, 4, 5)]
    stats = pipeline.tls.stats
    assert stats.resyncs == 1 and stats.records_failed == 0


def test_tls12_renegotiation_switches_keys_at_the_change_cipher_spec():
    """A renegotiation runs inside the protected session; each side's records use the new
    keys from its own ChangeCipherSpec on."""
    first = Tls12Session()
    tcp = TcpConversation()
    tcp.open()
    tcp.send(0, first.client_hello())
    tcp.send(1, first.server_flight())
    tcp.send(0, first.client_key_exchange())
    client, server = first.writers()
    tcp.send(0, CCS + first.finished(True, client))
    tcp.send(1, CCS + first.finished(False, server))
    tcp.send(0, client.seal(APPLICATION_DATA, sip(0)))
    second = Tls12Session()
    tcp.send(0, client.seal(HANDSHAKE, second.client_hello()[5:]))
    tcp.send(1, server.seal(HANDSHAKE, second.server_flight()[5:]))
    tcp.send(0, client.seal(HANDSHAKE, second.client_key_exchange()[5:]))
    client2, server2 = second.writers()
    tcp.send(0, client.seal(CHANGE_CIPHER_SPEC, b"\x01"))
    tcp.send(0, second.finished(True, client2))
    tcp.send(1, server.seal(APPLICATION_DATA, sip(1, "s")))  # the server's old keys still
    tcp.send(1, server.seal(CHANGE_CIPHER_SPEC, b"\x01"))
    tcp.send(1, second.finished(False, server2))
    tcp.send(0, client2.seal(APPLICATION_DATA, sip(2)))
    tcp.send(1, server2.seal(APPLICATION_DATA, sip(2, "s")))
    tcp.close()
    out, pipeline = run(tcp.frames, first.key_log_line() + second.key_log_line())
    assert [m.payload for m in out.messages] == [sip(0), sip(1, "s"), sip(2), sip(2, "s")]
    stats = pipeline.tls.stats
    assert stats.finished_verified == 4 and stats.sessions_full == 2


def test_tls13_protected_records_right_after_a_hello_retry_request_are_not_decrypted():
    """Found by the flow-boundary guard: a side still in plaintext after a HelloRetryRequest
    that receives protected records has no keys to look up (it used to raise KeyError)."""
    session = Tls13Session()
    tcp = TcpConversation()
    tcp.open()
    tcp.send(0, session.client_hello())
    tcp.send(1, session.server_hello(random=hashlib.sha256(b"HelloRetryRequest").digest()))
    tcp.send(0, record(APPLICATION_DATA, os.urandom(40)))
    tcp.close()
    out, pipeline = run(tcp.frames, session.key_log())
    assert pipeline.stats.internal_errors == 0
    assert out.messages == [] and pipeline.tls.stats.records_undecrypted == 1
