"""What a TCP/TLS collector has not acknowledged, and what is sent again when its connection
breaks (sinks/hep/ledger.py), with bytes and offsets alone."""

from __future__ import annotations

from captagent_tls.sinks.hep.ledger import (
    TLS_RECORD,
    InFlight,
    acknowledged_offset,
    group_records,
)


def test_a_packet_is_delivered_only_once_its_last_byte_is_acknowledged():
    ledger = InFlight()
    a, b, c = b"a" * 10, b"b" * 20, b"c" * 30
    assert ledger.wrote([a, b, c], 0) == 60
    assert ledger.acknowledge(29) == (1, 10)  # b's last byte (offset 30) not yet
    assert ledger.acknowledge(30) == (1, 20)
    assert ledger.acknowledge(59) == (0, 0)
    assert len(ledger) == 1
    assert ledger.acknowledge(60) == (1, 30)
    assert not ledger


def test_offsets_count_from_the_first_byte_of_the_connection():
    ledger = InFlight()
    handshake = 517  # TLS handshake bytes (or anything) written before the packets
    ledger.wrote([b"x" * 100], handshake)
    assert ledger.acknowledge(handshake + 99) == (0, 0)
    assert ledger.acknowledge(handshake + 100) == (1, 100)


def test_every_packet_of_a_tls_record_waits_for_the_end_of_the_record():
    """A collector decrypts nothing of a record it did not get whole."""
    ledger = InFlight()
    group = [b"a" * 100, b"b" * 100, b"c" * 100]
    record_end = 5 + 300 + 24 + 1000  # header, plaintext, tag, after 1000 bytes before
    ledger.wrote_record(group, record_end)
    assert ledger.acknowledge(record_end - 1) == (0, 0)  # even a's bytes are in: not usable
    assert ledger.acknowledge(record_end) == (3, 300)


def test_what_was_not_acknowledged_is_sent_again_in_order_and_only_that():
    ledger = InFlight()
    sent = [bytes([i]) * 50 for i in range(6)]
    ledger.wrote(sent[:3], 0)
    ledger.wrote_record(sent[3:], 400)
    ledger.acknowledge(100)  # the first two
    assert ledger.unacknowledged() == sent[2:]
    assert not ledger and ledger.unacknowledged() == []


def test_given_up_packets_are_counted_with_their_bytes():
    ledger = InFlight()
    ledger.wrote([b"a" * 7, b"b" * 9], 0)
    assert ledger.forget() == (2, 16)
    assert not ledger and ledger.acknowledge(10**9) == (0, 0)


def test_the_acknowledged_offset_is_what_was_written_less_what_the_socket_still_holds():
    assert acknowledged_offset(1000, 0) == 1000
    assert acknowledged_offset(1000, 400) == 600
    # no SIOCOUTQ on this platform: what the kernel took counts as acknowledged
    assert acknowledged_offset(1000, None) == 1000


def test_records_hold_at_most_16_KiB_of_packets_and_keep_their_order():
    sent = [bytes([i % 256]) * 1000 for i in range(40)]
    groups = group_records(sent)
    assert [p for g in groups for p in g] == sent
    assert all(sum(map(len, g)) <= TLS_RECORD for g in groups)
    assert [len(g) for g in groups] == [16, 16, 8]  # 16,000 bytes each: a 17th does not fit


def test_a_packet_larger_than_a_record_goes_alone():
    small, big = b"s" * 100, b"B" * (TLS_RECORD + 1)
    assert group_records([small, big, small]) == [[small], [big], [small]]
    assert group_records([b"x" * TLS_RECORD, small]) == [[b"x" * TLS_RECORD], [small]]
    assert group_records([]) == []
