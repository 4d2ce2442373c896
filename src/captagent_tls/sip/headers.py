"""What a person looks for in a SIP message: the start line (method, or status code and
reason), From, To and CSeq (RFC 3261 §7, §20).  Sans-IO, for the views (one-line listing,
call-flow report); the Call-ID comes with each message from the framing (``framing.py``).

Only the header block is read, and only the first occurrence of each field counts; compact
forms (``f``, ``t``) and any letter case are accepted.  Nothing here fails: a field that is
missing or malformed is empty.
"""

from __future__ import annotations

import re
from typing import NamedTuple

MAX_SUMMARY_HEADER = 64 * 1024  # as the framing's cap: a header block is never longer

_STATUS_LINE = re.compile(rb"SIP/2\.0 (\d{3})(?: ([^\r\n]*))?")
_REQUEST_LINE = re.compile(rb"([A-Za-z][A-Za-z0-9!%*_+`'~.-]*) ([^ \r\n]+) SIP/2\.0")
_FIELD = re.compile(
    rb"^(from|f|to|t|cseq)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE
)
_CSEQ = re.compile(r"(\d+)\s+([^\s]+)")
_ADDR_SPEC = re.compile(r"<([^>]*)>")
_NAMES = {b"from": "from", b"f": "from", b"to": "to", b"t": "to", b"cseq": "cseq"}


class SipSummary(NamedTuple):
    method: str  # of a request; "" for a response
    status: int  # of a response; 0 for a request
    reason: str  # reason phrase of a response
    from_: str  # the From field's value as sent (display name, URI and parameters)
    to: str
    cseq: int  # CSeq sequence number; 0 when missing
    cseq_method: str  # CSeq method: for a response, the method of the request it answers

    @property
    def is_request(self) -> bool:
        return bool(self.method)

    @property
    def label(self) -> str:
        """The method, or the status code and reason: what an arrow in a ladder says."""
        if self.method:
            return self.method
        if self.status:
            return f"{self.status} {self.reason}".rstrip()
        return ""


NOT_SIP = SipSummary("", 0, "", "", "", 0, "")


def summarize(message: bytes) -> SipSummary:
    """The start line and the From, To and CSeq fields of one SIP message."""
    end = message.find(b"\r\n\r\n", 0, MAX_SUMMARY_HEADER)
    head = message[: end if end >= 0 else MAX_SUMMARY_HEADER]
    method, status, reason = "", 0, ""
    line_end = head.find(b"\r\n")
    first = head if line_end < 0 else head[:line_end]
    if first.startswith(b"SIP/2.0 "):
        match = _STATUS_LINE.match(first)
        if match is None:
            return NOT_SIP
        status = int(match.group(1))
        reason = _text(match.group(2) or b"")
    else:
        match = _REQUEST_LINE.match(first)
        if match is None:
            return NOT_SIP
        method = _text(match.group(1)).upper()
    fields: dict[str, str] = {}
    for found in _FIELD.finditer(head, 0 if line_end < 0 else line_end):
        name = _NAMES[found.group(1).lower()]
        if name not in fields:
            fields[name] = _text(found.group(2))
    cseq, cseq_method = 0, ""
    parsed = _CSEQ.match(fields.get("cseq", ""))
    if parsed is not None and len(parsed.group(1)) <= 10:
        cseq, cseq_method = int(parsed.group(1)), parsed.group(2).upper()
    return SipSummary(
        method, status, reason, fields.get("from", ""), fields.get("to", ""), cseq, cseq_method
    )


def address_of(name_addr: str) -> str:
    """The URI of a From/To value: ``"Alice" <sip:alice@a.example>;tag=1`` gives
    ``sip:alice@a.example``; a bare ``sip:bob@b.example;tag=2`` gives ``sip:bob@b.example``."""
    match = _ADDR_SPEC.search(name_addr)
    if match is not None:
        return match.group(1).strip()
    return name_addr.split(";", 1)[0].strip()


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")
