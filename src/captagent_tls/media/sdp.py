"""SDP (RFC 8866) as far as the media stage needs it, and the SDP body of a SIP message.

What is read: the origin, session- and media-level ``c=``, each ``m=`` line (media, port,
port count, protocol, formats), ``a=rtpmap`` (clock rates), ``a=rtcp`` (RFC 3605: port and
optional address), ``a=rtcp-mux`` (RFC 5761), ``a=crypto`` (RFC 4568: tag, suite, one or more
``inline:`` key parameters with lifetime and MKI, session parameters), ``a=setup`` (RFC 4145),
``a=fingerprint`` (RFC 8122) and the direction attributes.  Session-level ``a=setup``,
``a=fingerprint`` and directions apply to every media that does not say otherwise.

Nothing here raises on what a peer sends: a line that does not parse is counted and skipped,
and the bounds (bytes, lines, media, crypto lines, keys, formats) stop the parse with
``truncated`` set.  What was read before is returned.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import NamedTuple

MAX_SDP_BYTES = 64 * 1024  # a SIP body this long is not a real session description
MAX_SDP_LINES = 2048
MAX_MEDIA = 32
MAX_CRYPTO_PER_MEDIA = 16
MAX_KEYS_PER_CRYPTO = 16  # RFC 4568 allows several inline keys, told apart by their MKI
MAX_FORMATS = 64
MAX_FINGERPRINTS = 8
MAX_MKI_BYTES = 128  # RFC 4568 §6.1: the MKI length is 1 to 128 bytes
MAX_MULTIPART_PARTS = 16
MAX_HEADER_BYTES = 64 * 1024  # as the SIP framing's cap

# RFC 3551 §6: the static payload types and their clock rates
STATIC_CLOCK_RATES: dict[int, int] = {
    0: 8000,  # PCMU
    3: 8000,  # GSM
    4: 8000,  # G723
    5: 8000,  # DVI4
    6: 16000,  # DVI4
    7: 8000,  # LPC
    8: 8000,  # PCMA
    9: 8000,  # G722 (the RTP clock is 8000 though it samples at 16000)
    10: 44100,  # L16 stereo
    11: 44100,  # L16 mono
    12: 8000,  # QCELP
    13: 8000,  # CN
    14: 90000,  # MPA
    15: 8000,  # G728
    16: 11025,  # DVI4
    17: 22050,  # DVI4
    18: 8000,  # G729
    25: 90000,  # CelB
    26: 90000,  # JPEG
    28: 90000,  # nv
    31: 90000,  # H261
    32: 90000,  # MPV
    33: 90000,  # MP2T
    34: 90000,  # H263
}

DIRECTIONS = frozenset(("sendrecv", "sendonly", "recvonly", "inactive"))
SETUP_ROLES = frozenset(("active", "passive", "actpass", "holdconn"))


class KeyParam(NamedTuple):
    """One ``inline:`` key of an ``a=crypto`` line (RFC 4568 §6.1)."""

    key_salt: bytes  # the master key and the master salt, concatenated
    lifetime: int | None  # packets, when given
    mki: int | None  # the MKI value, when the line has one
    mki_length: int  # bytes of MKI in each packet (0: no MKI)


@dataclass(frozen=True, slots=True)
class Crypto:
    """One ``a=crypto`` line."""

    tag: int
    suite: str
    keys: tuple[KeyParam, ...]
    session_params: tuple[str, ...] = ()

    def _has(self, name: str) -> bool:
        return name in self.session_params

    @property
    def unencrypted_srtcp(self) -> bool:
        return self._has("UNENCRYPTED_SRTCP")

    @property
    def unencrypted_srtp(self) -> bool:
        return self._has("UNENCRYPTED_SRTP")

    @property
    def unauthenticated_srtp(self) -> bool:
        return self._has("UNAUTHENTICATED_SRTP")

    @property
    def kdr(self) -> int | None:
        """``KDR=n`` (RFC 4568 §6.3.1): session keys are derived again every 2^n packets.
        None without the parameter: keys are derived once (SRTP key_derivation_rate 0)."""
        for param in self.session_params:
            if param.startswith("KDR="):
                value = param[4:]
                if value.isdigit() and len(value) <= 2 and int(value) <= 24:
                    return int(value)
        return None

    @property
    def mki_length(self) -> int:
        return self.keys[0].mki_length if self.keys else 0


class RtpMap(NamedTuple):
    encoding: str
    clock_rate: int
    channels: int


class Origin(NamedTuple):
    username: str
    session_id: str
    version: str
    address: str


@dataclass(frozen=True, slots=True)
class Media:
    """One ``m=`` section, with what it inherits from the session level."""

    kind: str  # "audio", "video", ...
    port: int  # 0: the stream is rejected or disabled
    port_count: int
    proto: str  # "RTP/AVP", "RTP/SAVP", "UDP/TLS/RTP/SAVPF", ...
    formats: tuple[str, ...]
    address: str | None  # the connection address (media c=, else session c=)
    rtcp_port: int  # a=rtcp, else port + 1
    rtcp_address: str | None  # a=rtcp's address, else ``address``
    rtcp_mux: bool
    crypto: tuple[Crypto, ...]
    setup: str | None
    fingerprints: tuple[tuple[str, str], ...]
    direction: str
    rtpmap: dict[int, RtpMap] = field(default_factory=dict)

    @property
    def secure(self) -> bool:
        """SRTP profile: SAVP or SAVPF (RFC 3711, 5124), with SDES or DTLS keys."""
        return "SAVP" in self.proto.upper()

    @property
    def dtls(self) -> bool:
        """Keys from a DTLS handshake on the media path (RFC 5763/5764)."""
        return self.proto.upper().startswith(("UDP/TLS/", "TCP/TLS/", "DCCP/TLS/"))

    def clock_rate(self, payload_type: int) -> int | None:
        mapped = self.rtpmap.get(payload_type)
        if mapped is not None:
            return mapped.clock_rate
        return STATIC_CLOCK_RATES.get(payload_type)

    def crypto_by_tag(self, tag: int) -> Crypto | None:
        for line in self.crypto:
            if line.tag == tag:
                return line
        return None


@dataclass(frozen=True, slots=True)
class SessionDescription:
    origin: Origin | None
    address: str | None  # session-level c=
    media: tuple[Media, ...]
    truncated: bool = False  # a bound stopped the parse: what follows it was not read
    malformed_lines: int = 0  # lines skipped because they did not parse


EMPTY = SessionDescription(None, None, ())


@dataclass(slots=True)
class _MediaBuilder:
    kind: str
    port: int
    port_count: int
    proto: str
    formats: tuple[str, ...]
    address: str | None = None
    rtcp_port: int | None = None
    rtcp_address: str | None = None
    rtcp_mux: bool = False
    crypto: list[Crypto] = field(default_factory=list)
    setup: str | None = None
    fingerprints: list[tuple[str, str]] = field(default_factory=list)
    direction: str | None = None
    rtpmap: dict[int, RtpMap] = field(default_factory=dict)


class _Session:
    __slots__ = ("setup", "fingerprints", "direction", "address", "crypto_overflow")

    def __init__(self) -> None:
        self.setup: str | None = None
        self.fingerprints: list[tuple[str, str]] = []
        self.direction: str | None = None
        self.address: str | None = None
        self.crypto_overflow = False


def parse_sdp(body: bytes | str) -> SessionDescription:
    """Everything the bounds let us read of one session description; never raises."""
    if isinstance(body, bytes):
        truncated = len(body) > MAX_SDP_BYTES
        text = body[:MAX_SDP_BYTES].decode("utf-8", "replace")
    else:
        truncated = len(body) > MAX_SDP_BYTES
        text = body[:MAX_SDP_BYTES]
    session = _Session()
    origin: Origin | None = None
    media: list[_MediaBuilder] = []
    malformed = 0
    lines = text.split("\n")
    if len(lines) > MAX_SDP_LINES:
        lines = lines[:MAX_SDP_LINES]
        truncated = True
    for raw in lines:
        line = raw.rstrip("\r")
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            malformed += 1
            continue
        kind, value = line[0], line[2:]
        current = media[-1] if media else None
        ok = True
        if kind == "m":
            if len(media) >= MAX_MEDIA:
                truncated = True
                break
            parsed = _media_line(value)
            if parsed is None:
                ok = False
            else:
                media.append(parsed)
        elif kind == "c":
            address = _connection_address(value)
            if address is None:
                ok = False
            elif current is None:
                session.address = address
            else:
                current.address = address
        elif kind == "o":
            fields = value.split()
            if len(fields) == 6:
                origin = Origin(fields[0], fields[1], fields[2], fields[5])
            else:
                ok = False
        elif kind == "a":
            ok = _attribute(value, session, current)
            if session.crypto_overflow:
                truncated = True
                session.crypto_overflow = False
        if not ok:
            malformed += 1
    return SessionDescription(
        origin,
        session.address,
        tuple(_finish(m, session) for m in media),
        truncated,
        malformed,
    )


def _finish(m: _MediaBuilder, session: _Session) -> Media:
    address = m.address if m.address is not None else session.address
    rtcp_port = m.rtcp_port if m.rtcp_port is not None else (m.port + 1) & 0xFFFF
    return Media(
        kind=m.kind,
        port=m.port,
        port_count=m.port_count,
        proto=m.proto,
        formats=m.formats,
        address=address,
        rtcp_port=rtcp_port,
        rtcp_address=m.rtcp_address if m.rtcp_address is not None else address,
        rtcp_mux=m.rtcp_mux,
        crypto=tuple(m.crypto),
        setup=m.setup if m.setup is not None else session.setup,
        fingerprints=tuple(m.fingerprints or session.fingerprints),
        direction=m.direction or session.direction or "sendrecv",
        rtpmap=m.rtpmap,
    )


def _port(text: str) -> int | None:
    if not text.isdigit() or len(text) > 5:
        return None
    value = int(text)
    return value if value <= 0xFFFF else None


def _media_line(value: str) -> _MediaBuilder | None:
    parts = value.split()
    if len(parts) < 3:
        return None
    port_text, _, count_text = parts[1].partition("/")
    port = _port(port_text)
    count = 1
    if count_text:
        if not count_text.isdigit() or len(count_text) > 5:
            return None
        count = int(count_text)
    if port is None or count < 1:
        return None
    return _MediaBuilder(parts[0], port, count, parts[2], tuple(parts[3 : 3 + MAX_FORMATS]))


def _connection_address(value: str) -> str | None:
    """``IN IP4 192.0.2.1`` (or ``.../ttl/count`` for multicast) -> the address."""
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        return None
    address = parts[2].split("/", 1)[0]
    return address or None


def _attribute(value: str, session: _Session, current: _MediaBuilder | None) -> bool:
    name, colon, rest = value.partition(":")
    if not colon:
        if name in DIRECTIONS:
            if current is None:
                session.direction = name
            else:
                current.direction = name
        elif name == "rtcp-mux" and current is not None:
            current.rtcp_mux = True
        return True
    if name == "rtpmap":
        return current is None or _rtpmap(rest, current)
    if name == "rtcp":
        return current is None or _rtcp(rest, current)
    if name == "crypto":
        if current is None:
            return True  # RFC 4568 defines a=crypto at media level only
        if len(current.crypto) >= MAX_CRYPTO_PER_MEDIA:
            session.crypto_overflow = True
            return True
        crypto = parse_crypto(rest)
        if crypto is None:
            return False
        current.crypto.append(crypto)
        return True
    if name == "setup":
        role = rest.strip().lower()
        if role not in SETUP_ROLES:
            return False
        if current is None:
            session.setup = role
        else:
            current.setup = role
        return True
    if name == "fingerprint":
        hash_name, _, digest = rest.strip().partition(" ")
        if not hash_name or not digest:
            return False
        target = session.fingerprints if current is None else current.fingerprints
        if len(target) < MAX_FINGERPRINTS:
            target.append((hash_name.lower(), digest.strip().upper()))
        return True
    return True  # an attribute the media stage does not need


def _rtpmap(rest: str, media: _MediaBuilder) -> bool:
    pt_text, _, encoding = rest.partition(" ")
    if not pt_text.isdigit() or len(pt_text) > 3 or int(pt_text) > 127:
        return False
    parts = encoding.strip().split("/")
    if len(parts) < 2 or not parts[1].isdigit() or len(parts[1]) > 9:
        return False
    channels = 1
    if len(parts) > 2:
        if not parts[2].isdigit() or len(parts[2]) > 3:
            return False
        channels = int(parts[2])
    clock = int(parts[1])
    if clock == 0:
        return False
    if len(media.rtpmap) < MAX_FORMATS:
        media.rtpmap[int(pt_text)] = RtpMap(parts[0], clock, channels)
    return True


def _rtcp(rest: str, media: _MediaBuilder) -> bool:
    """RFC 3605: ``a=rtcp:PORT`` or ``a=rtcp:PORT IN IP4 ADDRESS``."""
    parts = rest.split()
    if not parts:
        return False
    port = _port(parts[0])
    if port is None:
        return False
    address = None
    if len(parts) > 1:
        address = _connection_address(" ".join(parts[1:]))
        if address is None:
            return False
    media.rtcp_port = port
    media.rtcp_address = address
    return True


_SUITE = re.compile(r"[A-Za-z0-9_]{1,64}")


def parse_crypto(rest: str) -> Crypto | None:
    """The value of an ``a=crypto`` attribute: ``TAG SUITE KEY-PARAMS [SESSION-PARAMS]``."""
    parts = rest.split()
    if len(parts) < 3:
        return None
    tag_text, suite, key_params = parts[0], parts[1], parts[2]
    if not tag_text.isdigit() or len(tag_text) > 9 or not _SUITE.fullmatch(suite):
        return None
    keys: list[KeyParam] = []
    for key_param in key_params.split(";"):
        if len(keys) >= MAX_KEYS_PER_CRYPTO:
            break
        parsed = parse_key_param(key_param)
        if parsed is None:
            return None
        keys.append(parsed)
    if not keys or len({k.mki_length for k in keys}) != 1:
        return None  # RFC 4568 §6.1: every key of a line has the same MKI length
    session_params = tuple(p for p in parts[3:35])
    return Crypto(int(tag_text), suite.upper(), tuple(keys), session_params)


def parse_key_param(text: str) -> KeyParam | None:
    """``inline:<base64 key||salt>[|<lifetime>][|<MKI>:<length>]``."""
    method, colon, info = text.partition(":")
    if not colon or method.lower() != "inline":
        return None
    fields = info.split("|")
    if not 1 <= len(fields) <= 3:
        return None
    key_salt = _base64(fields[0])
    if key_salt is None or not 1 <= len(key_salt) <= 128:
        return None
    lifetime: int | None = None
    mki: int | None = None
    mki_length = 0
    for extra in fields[1:]:
        if ":" in extra:
            if mki is not None:
                return None
            value_text, _, length_text = extra.partition(":")
            if not value_text.isdigit() or not length_text.isdigit() or len(length_text) > 3:
                return None
            mki_length = int(length_text)
            if not 1 <= mki_length <= MAX_MKI_BYTES or len(value_text) > 3 * MAX_MKI_BYTES:
                return None
            mki = int(value_text)
            if mki >= 1 << (8 * mki_length):
                return None
        else:
            if lifetime is not None or mki is not None:
                return None  # the lifetime comes before the MKI
            lifetime = _lifetime(extra)
            if lifetime is None:
                return None
    return KeyParam(key_salt, lifetime, mki, mki_length)


def _lifetime(text: str) -> int | None:
    if text.startswith("2^"):
        exponent = text[2:]
        if exponent.isdigit() and len(exponent) <= 2 and int(exponent) <= 64:
            return 1 << int(exponent)
        return None
    if text.isdigit() and len(text) <= 20:
        return int(text)
    return None


def _base64(text: str) -> bytes | None:
    text = text.strip()
    if not text or len(text) > 256:
        return None
    text += "=" * (-len(text) % 4)  # some peers leave the padding out
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


# -- the SDP body of a SIP message -------------------------------------------------------

_HEADER_LINE = re.compile(rb"^([A-Za-z0-9!%*_+`'~.-]+)[ \t]*:[ \t]*(.*?)[ \t]*\r?$", re.MULTILINE)
_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]{1,70})"|([^;\s]{1,70}))', re.IGNORECASE)


def header_values(head: bytes, names: tuple[bytes, ...]) -> list[bytes]:
    """The values of the header fields named ``names`` (lower case; compact forms included
    by the caller), in order, folded continuation lines left out.  Reads only ``head``."""
    found = []
    for match in _HEADER_LINE.finditer(head):
        if match.group(1).lower() in names:
            found.append(match.group(2))
    return found


def _media_type(value: bytes) -> tuple[str, str]:
    """``application/SDP; charset=x`` -> ("application/sdp", "; charset=x")."""
    text = value.decode("latin-1")
    media_type, _, params = text.partition(";")
    return media_type.strip().lower(), params


def sdp_of_sip(message: bytes) -> bytes | None:
    """The SDP body of a SIP message (``Content-Type: application/sdp``, or the first
    ``application/sdp`` part of a ``multipart/*`` body), or None."""
    end = message.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES)
    if end < 0:
        return None
    head, body = message[: end + 2], message[end + 4 :]
    if not body:
        return None
    types = header_values(head, (b"content-type", b"c"))
    if not types:
        return None
    if any(v.strip().lower() not in (b"identity", b"") for v in _encodings(head)):
        return None  # gzip and the like are not decoded here
    media_type, params = _media_type(types[0])
    if media_type == "application/sdp":
        return body[:MAX_SDP_BYTES]
    if media_type.startswith("multipart/"):
        return _sdp_part(body, params)
    return None


def _encodings(head: bytes) -> list[bytes]:
    return header_values(head, (b"content-encoding", b"e"))


def _sdp_part(body: bytes, params: str) -> bytes | None:
    match = _BOUNDARY.search(params)
    if match is None:
        return None
    boundary = b"--" + (match.group(1) or match.group(2)).encode("latin-1")
    pieces = body.split(boundary, MAX_MULTIPART_PARTS + 1)
    for piece in pieces[1 : MAX_MULTIPART_PARTS + 1]:
        if piece.startswith(b"--"):
            break  # the closing delimiter
        # the delimiter's line ends here; then the part's headers, a blank line, the body
        if piece.startswith(b"\r\n"):
            piece = piece[2:]
        elif piece.startswith(b"\n"):
            piece = piece[1:]
        else:
            continue
        if piece.startswith(b"\r\n"):
            continue  # a part without headers is text/plain (RFC 2046 §5.1.1)
        split = piece.find(b"\r\n\r\n")
        if split < 0:
            continue
        head, content = piece[: split + 2], piece[split + 4 :]
        types = header_values(head, (b"content-type",))
        if types and _media_type(types[0])[0] == "application/sdp":
            # the CRLF before the next delimiter belongs to the delimiter (RFC 2046 §5.1.1)
            if content.endswith(b"\r\n"):
                content = content[:-2]
            return content[:MAX_SDP_BYTES]
    return None
