"""sip/headers.py: the start line and the From, To and CSeq fields the views show."""

from __future__ import annotations

import json

import pytest

from captagent_tls.sip.headers import NOT_SIP, address_of, summarize
from tests.support.paths import FIXTURES

INVITE = (
    b"INVITE sips:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bK1\r\n"
    b'From: "Alice" <sips:alice@example.com>;tag=1928\r\n'
    b"To: <sips:bob@example.com>\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Content-Length: 4\r\n\r\n"
    b"From: not a header\r\n"
)


def test_request():
    s = summarize(INVITE)
    assert (s.method, s.status, s.cseq, s.cseq_method) == ("INVITE", 0, 314159, "INVITE")
    assert s.from_ == '"Alice" <sips:alice@example.com>;tag=1928'
    assert s.to == "<sips:bob@example.com>"
    assert s.is_request and s.label == "INVITE"


def test_response_with_compact_forms_any_case_and_spacing():
    msg = (
        b"SIP/2.0 180 Ringing\r\nf:<sip:a@x>;tag=9\r\nT :  sip:b@y ;tag=2 \r\n"
        b"cseq:\t7   invite\r\n\r\n"
    )
    s = summarize(msg)
    assert (s.method, s.status, s.reason) == ("", 180, "Ringing")
    assert (s.from_, s.to) == ("<sip:a@x>;tag=9", "sip:b@y ;tag=2")
    assert (s.cseq, s.cseq_method) == (7, "INVITE")
    assert s.label == "180 Ringing" and not s.is_request


def test_the_first_field_counts_and_the_body_is_not_read():
    msg = (
        b"BYE sip:b@y SIP/2.0\r\nFrom: <sip:first@x>\r\nFrom: <sip:second@x>\r\n"
        b"Content-Length: 20\r\n\r\nTo: <sip:body@x>\r\n"
    )
    s = summarize(msg)
    assert s.from_ == "<sip:first@x>"
    assert s.to == ""


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world\r\n\r\n",
        b"SIP/2.0 abc\r\n\r\n",
        b"\x16\x03\x01\x02\x00",
        b"INVITE\r\n\r\n",
        b"SIP/2.0 200 OK\r\nCSeq: 99999999999999999999 INVITE\r\n\r\n",
    ],
)
def test_anything_else_is_empty_never_an_error(data):
    s = summarize(data)
    assert s == NOT_SIP or (s.status == 200 and s.cseq == 0)


def test_status_without_reason_and_missing_fields():
    s = summarize(b"SIP/2.0 200\r\n\r\n")
    assert (s.status, s.reason, s.label, s.from_, s.cseq) == (200, "", "200", "", 0)


@pytest.mark.parametrize(
    "value, uri",
    [
        ('"Alice" <sips:alice@example.com>;tag=1', "sips:alice@example.com"),
        ("<sip:bob@b.example>", "sip:bob@b.example"),
        ("sip:carol@c.example;tag=2", "sip:carol@c.example"),
        ("", ""),
    ],
)
def test_address_of(value, uri):
    assert address_of(value) == uri


def test_every_fixture_message_has_the_start_line_it_was_sent_with():
    """Ground truth: the texts the fixture peers sent; the label is their first line's."""
    checked = 0
    for path in sorted(FIXTURES.glob("*.json")):
        for message in json.loads(path.read_text())["messages"]:
            text = message["text"]
            first = text.split("\r\n", 1)[0]
            s = summarize(text.encode("latin-1"))
            if first.startswith("SIP/2.0 "):
                assert s.label == first[8:], (path.name, first)
            else:
                assert s.label == first.split(" ", 1)[0], (path.name, first)
            assert s.cseq > 0, (path.name, first)
            checked += 1
    assert checked > 300
