"""The HTTP/1.1 opening handshake of a WebSocket connection (RFC 6455 §4), as a third party
sees it: the client's ``GET`` with ``Upgrade: websocket`` and the server's answer.  Sans-IO.

Only what an observer needs is read: the status, the upgrade headers, the key and its accept
value (a ``101`` whose accept value does not match the key is one the client rejects), the
subprotocol and the extensions the server chose.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import NamedTuple

MAX_HEAD_BYTES = 16 * 1024  # an opening handshake is a few hundred bytes; browsers stay < 8 KiB
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
_REQUEST_LINE = re.compile(rb"GET [^ \r\n]+ HTTP/1\.1\r\n")
_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3})(?: [^\r\n]*)?\r\n")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


class HandshakeError(ValueError):
    """An opening handshake that is not one: a plain HTTP request, or a malformed upgrade."""


class Head(NamedTuple):
    """The start line and header fields of one HTTP/1.1 message.  Header names are lower
    case; a field given several times is joined with ", " (RFC 9110 §5.3)."""

    start: bytes
    fields: dict[str, str]


def head_end(data: bytes | bytearray) -> int:
    """The offset just past the blank line that ends the head, or -1 while incomplete."""
    end = data.find(b"\r\n\r\n")
    return -1 if end < 0 else end + 4


def parse_head(head: bytes) -> Head:
    """``head`` holds a start line and header lines and ends with the blank line."""
    lines = head[:-4].split(b"\r\n")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or line[:1] in b" \t":
            raise HandshakeError(f"malformed header line {line[:60]!r}")
        key = name.decode("latin-1").lower()
        text = value.strip(b" \t").decode("latin-1")
        fields[key] = f"{fields[key]}, {text}" if key in fields else text
    return Head(lines[0] + b"\r\n", fields)


def _has_token(value: str, token: str) -> bool:
    return any(part.strip().lower() == token for part in value.split(","))


class UpgradeRequest(NamedTuple):
    target: str
    key: str
    subprotocols: tuple[str, ...]  # offered, in order
    extensions: str  # as offered (the server's answer is what counts)


def parse_request(head: bytes) -> UpgradeRequest:
    """A client's ``GET`` asking to switch to WebSocket; HandshakeError for anything else."""
    if not _REQUEST_LINE.match(head):
        raise HandshakeError("not an HTTP/1.1 GET request")
    parsed = parse_head(head)
    fields = parsed.fields
    if not _has_token(fields.get("upgrade", ""), "websocket"):
        raise HandshakeError("an HTTP request without Upgrade: websocket")
    if not _has_token(fields.get("connection", ""), "upgrade"):
        raise HandshakeError("Upgrade: websocket without Connection: Upgrade")
    offered = tuple(
        p.strip() for p in fields.get("sec-websocket-protocol", "").split(",") if p.strip()
    )
    return UpgradeRequest(
        parsed.start.split(b" ")[1].decode("latin-1"),
        fields.get("sec-websocket-key", ""),
        offered,
        fields.get("sec-websocket-extensions", ""),
    )


class Extension(NamedTuple):
    name: str  # lower case
    params: dict[str, str | None]  # parameter name (lower case) -> value, None without "="


class UpgradeResponse(NamedTuple):
    status: int
    subprotocol: str  # "" when the server chose none
    extensions: list[Extension]


def parse_status(head: bytes) -> int:
    """The status code of a response head; HandshakeError when it is not HTTP/1.1."""
    match = _STATUS_LINE.match(head)
    if match is None:
        raise HandshakeError("the answer is not an HTTP/1.1 response")
    return int(match.group(1))


def parse_response(head: bytes, request: UpgradeRequest) -> UpgradeResponse:
    """The server's ``101 Switching Protocols``; HandshakeError when the client would not
    accept it as the switch to WebSocket (RFC 6455 §4.1, the client's checks)."""
    status = parse_status(head)
    if status != 101:
        return UpgradeResponse(status, "", [])
    fields = parse_head(head).fields
    if not _has_token(fields.get("upgrade", ""), "websocket"):
        raise HandshakeError("101 without Upgrade: websocket")
    if not _has_token(fields.get("connection", ""), "upgrade"):
        raise HandshakeError("101 without Connection: Upgrade")
    if request.key and fields.get("sec-websocket-accept") != accept_value(request.key):
        raise HandshakeError("101 whose Sec-WebSocket-Accept does not match the client's key")
    subprotocol = fields.get("sec-websocket-protocol", "").strip()
    if subprotocol and (not _TOKEN.match(subprotocol) or subprotocol not in request.subprotocols):
        raise HandshakeError(
            f"101 chose subprotocol {subprotocol!r}, which the client did not offer"
        )
    return UpgradeResponse(
        101, subprotocol, parse_extensions(fields.get("sec-websocket-extensions", ""))
    )


def accept_value(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("latin-1") + _GUID).digest()).decode()


def parse_extensions(value: str) -> list[Extension]:
    """``Sec-WebSocket-Extensions`` (RFC 6455 §9.1): ``name; param; param=value, name2``."""
    extensions: list[Extension] = []
    for item in _split_outside_quotes(value, ","):
        parts = [p.strip() for p in _split_outside_quotes(item, ";")]
        if not parts or not parts[0]:
            if item.strip():
                raise HandshakeError(f"malformed extension {item.strip()[:60]!r}")
            continue
        if not _TOKEN.match(parts[0]):
            raise HandshakeError(f"malformed extension name {parts[0][:60]!r}")
        params: dict[str, str | None] = {}
        for part in parts[1:]:
            name, equals, raw = part.partition("=")
            name = name.strip().lower()
            param: str | None = raw.strip() if equals else None
            if param is not None and len(param) >= 2 and param[0] == param[-1] == '"':
                param = param[1:-1]
            if not _TOKEN.match(name) or (param is not None and not _TOKEN.match(param)):
                raise HandshakeError(f"malformed extension parameter {part[:60]!r}")
            if name in params:
                raise HandshakeError(f"extension parameter {name} given twice")
            params[name] = param
        extensions.append(Extension(parts[0].lower(), params))
    return extensions


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    if '"' not in text:
        return text.split(separator)
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:  # header values are short: a few dozen characters
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts
