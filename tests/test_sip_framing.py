"""SIP framing with bytes alone: however the bytes are cut, the same messages come out."""

from __future__ import annotations

import random

from captagent_tls.sip.framing import SipBudget, SipFramer

INVITE = (
    b"INVITE sips:bob@example.test SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bK1\r\n"
    b"Call-ID: abc-123@10.0.0.1\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 30\r\n\r\n"
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\n"
)
TRYING = b"SIP/2.0 100 Trying\r\ni: compact-id\r\nl: 0\r\n\r\n"
BYE = (
    b"BYE sips:bob@example.test SIP/2.0\r\n"
    b"call-id:  lower-case@x  \r\n"
    b"content-length:5\r\n\r\nhello"
)


def frame_all(chunks):
    framer = SipFramer()
    units = []
    for chunk in chunks:
        units += framer.feed(chunk)
    units += framer.flush()
    return units


def test_messages_and_call_ids_in_every_header_form():
    units = frame_all([INVITE + TRYING + BYE])
    assert [u.data for u in units] == [INVITE, TRYING, BYE]
    assert [u.call_id for u in units] == ["abc-123@10.0.0.1", "compact-id", "lower-case@x"]
    assert all(u.is_sip for u in units)


def test_any_cut_of_the_stream_gives_the_same_messages():
    stream = INVITE + b"\r\n\r\n" + TRYING + b"\r\n" + BYE + INVITE
    rng = random.Random(5061)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 30)))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert [u.data for u in frame_all(chunks)] == [INVITE, TRYING, BYE, INVITE]


def test_byte_by_byte():
    stream = INVITE + TRYING
    assert [u.data for u in frame_all([stream[i : i + 1] for i in range(len(stream))])] == [
        INVITE,
        TRYING,
    ]


def test_keep_alives_are_not_messages():
    units = frame_all([b"\r\n\r\n", INVITE, b"\r\n", b"\r\n\r\n", TRYING, b"\r\n\r\n"])
    assert [u.data for u in units] == [INVITE, TRYING]


def test_body_waits_for_its_content_length():
    framer = SipFramer()
    assert framer.feed(INVITE[:-5]) == []
    assert [u.data for u in framer.feed(INVITE[-5:])] == [INVITE]


def test_stream_that_is_not_sip_passes_through_as_raw_chunks():
    framer = SipFramer()
    first = framer.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    second = framer.feed(b"\x00\x01binary")
    assert [(u.data, u.is_sip) for u in first + second] == [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (b"\x00\x01binary", False),
    ]


def test_after_a_gap_framing_finds_the_next_start_line():
    framer = SipFramer()
    assert [u.data for u in framer.feed(INVITE + TRYING[:10])] == [INVITE]
    lost = framer.gap()
    assert [(u.data, u.is_sip) for u in lost] == [(TRYING[:10], False)]
    units = framer.feed(b"ody of something\r\nlost\r\n" + BYE + TRYING)
    assert [(u.data, u.is_sip) for u in units] == [
        (b"ody of something\r\nlost\r\n", False),
        (BYE, True),
        (TRYING, True),
    ]


def test_gap_that_cuts_exactly_at_a_message_boundary():
    framer = SipFramer()
    framer.feed(INVITE)
    assert framer.gap() == []
    assert [u.data for u in framer.feed(BYE)] == [BYE]


def test_incomplete_message_at_the_end_is_handed_over_raw():
    units = frame_all([INVITE, BYE[:20]])
    assert [(u.data, u.is_sip) for u in units] == [(INVITE, True), (BYE[:20], False)]


def test_broken_message_inside_a_sip_stream_is_skipped_to_the_next_one():
    broken = b"THIS IS NOT A START LINE\r\nfoo: bar\r\n\r\n"
    units = frame_all([INVITE + broken + TRYING])
    assert [(u.data, u.is_sip) for u in units] == [
        (INVITE, True),
        (broken[:26], False),
        (broken[26:], False),
        (TRYING, True),
    ]


def test_missing_content_length_means_no_body():
    message = b"OPTIONS sip:x SIP/2.0\r\nCall-ID: o\r\n\r\n"
    assert [u.data for u in frame_all([message + TRYING])] == [message, TRYING]


# -- size bounds ---------------------------------------------------------------------------


def big_message(body: bytes, method: bytes = b"MESSAGE") -> bytes:
    return (
        method + b" sip:bob@example.test SIP/2.0\r\nCall-ID: big@x\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


# a body with lines that look like start lines (message/sipfrag): hunting in it would invent
SIPFRAG_BODY = b"SIP/2.0 200 OK\r\nCall-ID: not-a-message\r\nContent-Length: 0\r\n\r\n" * 40


def test_a_message_over_the_size_bound_is_dropped_whole_and_framing_goes_on():
    budget = SipBudget(max_message_bytes=1000)
    big = big_message(SIPFRAG_BODY)
    assert len(big) > 1000
    framer = SipFramer(budget)
    units = []
    for piece in (big[:30], big[30:900], big[900:1500], big[1500:] + INVITE + TRYING):
        units += framer.feed(piece)
        assert len(framer.buf) <= 1000
    assert [(u.data, u.is_sip) for u in units] == [(INVITE, True), (TRYING, True)]
    assert framer.idle and budget.held == 0
    assert budget.oversized_messages == 1 and budget.dropped_bytes == len(big)


def test_a_big_message_that_arrives_in_one_read_needs_no_buffer_and_passes():
    budget = SipBudget(max_message_bytes=1000)
    big = big_message(SIPFRAG_BODY)
    units = SipFramer(budget).feed(big + INVITE)
    assert [u.data for u in units] == [big, INVITE]
    assert budget.oversized_messages == 0


def test_a_gap_while_dropping_a_message_hunts_for_the_next_one():
    framer = SipFramer(SipBudget(max_message_bytes=1000))
    big = big_message(b"x" * 5000)
    assert framer.feed(INVITE + big[:2000]) != []
    assert framer.gap() == []
    units = framer.feed(b"x" * 100 + b"\r\n" + BYE)
    assert [(u.data, u.is_sip) for u in units] == [(b"x" * 100 + b"\r\n", False), (BYE, True)]


def test_all_framers_together_hold_no_more_than_the_budget():
    budget = SipBudget(limit=10_000, max_message_bytes=8000)
    first, second = SipFramer(budget), SipFramer(budget)
    big = big_message(b"y" * 7000)
    assert first.feed(big[:6000]) == []
    assert budget.held == 6000
    assert second.feed(big[:6000]) == []  # would make 12,000: this message is dropped
    assert budget.held == 6000 and budget.over_budget_messages == 1
    # the rest of the dropped message is skipped by its Content-Length; what follows frames
    assert [u.data for u in second.feed(big[6000:] + BYE)] == [BYE]
    assert [u.data for u in first.feed(big[6000:])] == [big]
    assert budget.held == 0 and budget.dropped_bytes == len(big)


def test_a_message_dropped_before_its_header_ends_is_hunted_past():
    budget = SipBudget(limit=100)
    framer = SipFramer(budget)
    assert framer.feed(INVITE) != []  # a first message: the stream is SIP
    assert framer.feed(b"OPTIONS sip:x SIP/2.0\r\nVia: " + b"v" * 200) == []
    assert budget.over_budget_messages == 1 and budget.held == 0 and not framer.buf
    units = framer.feed(b"v\r\nCall-ID: lost\r\n\r\n" + TRYING)
    assert [u.data for u in units if u.is_sip] == [TRYING]


def test_flush_and_gap_give_their_bytes_back_to_the_budget():
    budget = SipBudget()
    framer = SipFramer(budget)
    framer.feed(INVITE[:50])
    assert budget.held == 50
    framer.gap()
    assert budget.held == 0
    framer.feed(INVITE + BYE[:20])
    assert budget.held == 20
    framer.flush()
    assert budget.held == 0
