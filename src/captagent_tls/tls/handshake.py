"""Parse the handshake messages we need: hellos and their extensions, certificates, key
exchange, tickets and Finished.  Each function takes a message body and raises ``ParseError``
on malformed input.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

HELLO_REQUEST = 0
CLIENT_HELLO = 1
SERVER_HELLO = 2
NEW_SESSION_TICKET = 4
END_OF_EARLY_DATA = 5
ENCRYPTED_EXTENSIONS = 8
CERTIFICATE = 11
SERVER_KEY_EXCHANGE = 12
CERTIFICATE_REQUEST = 13
SERVER_HELLO_DONE = 14
CERTIFICATE_VERIFY = 15
CLIENT_KEY_EXCHANGE = 16
FINISHED = 20
KEY_UPDATE = 24
MESSAGE_HASH = 254

EXT_SERVER_NAME = 0
EXT_ENCRYPT_THEN_MAC = 22
EXT_EXTENDED_MASTER_SECRET = 23
EXT_SESSION_TICKET = 35
EXT_PRE_SHARED_KEY = 41
EXT_EARLY_DATA = 42
EXT_SUPPORTED_VERSIONS = 43

# ServerHello.random of a HelloRetryRequest (RFC 8446 §4.1.3)
HELLO_RETRY_RANDOM = hashlib.sha256(b"HelloRetryRequest").digest()


class ParseError(Exception):
    pass


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise ParseError("message is truncated")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> bytes:
        return self.take(self.uint(length_size))

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos


def parse_extensions(body: bytes) -> dict[int, bytes]:
    """An extensions block on its own, as in EncryptedExtensions."""
    return _extensions(_Reader(body))


def _extensions(reader: _Reader) -> dict[int, bytes]:
    if not reader.remaining:
        return {}
    block = _Reader(reader.vector(2))
    extensions: dict[int, bytes] = {}
    while block.remaining:
        ext_type = block.uint(2)
        extensions[ext_type] = block.vector(2)
    return extensions


@dataclass
class ClientHello:
    version: int
    random: bytes
    session_id: bytes
    cipher_suites: bytes  # two bytes per suite, as offered
    extensions: dict[int, bytes] = field(default_factory=dict)

    @property
    def ticket(self) -> bytes | None:
        """The session ticket offered for resumption (RFC 5077), if any."""
        return self.extensions.get(EXT_SESSION_TICKET) or None

    @property
    def supported_versions(self) -> list[int]:
        """The versions of the supported_versions extension (RFC 8446 §4.2.1)."""
        versions = self.extensions.get(EXT_SUPPORTED_VERSIONS, b"")[1:]
        return [int.from_bytes(versions[i : i + 2], "big") for i in range(0, len(versions) - 1, 2)]

    @property
    def offers_tls13(self) -> bool:
        return any(v >= 0x0304 and v >> 8 in (3, 0x7F) for v in self.supported_versions)

    @property
    def server_name(self) -> str | None:
        data = self.extensions.get(EXT_SERVER_NAME)
        if not data:
            return None
        try:
            names = _Reader(_Reader(data).vector(2))
            while names.remaining:
                name_type = names.uint(1)
                name = names.vector(2)
                if name_type == 0:
                    return name.decode("ascii", "replace")
        except ParseError:
            return None
        return None


@dataclass
class ServerHello:
    version: int  # negotiated: supported_versions wins over legacy_version
    random: bytes
    session_id: bytes
    cipher_suite: int
    extensions: dict[int, bytes] = field(default_factory=dict)

    @property
    def is_hello_retry(self) -> bool:
        return self.random == HELLO_RETRY_RANDOM


def parse_client_hello(body: bytes) -> ClientHello:
    r = _Reader(body)
    version = r.uint(2)
    random = r.take(32)
    session_id = r.vector(1)
    suites = r.vector(2)
    r.vector(1)  # compression methods
    return ClientHello(version, random, session_id, suites, _extensions(r))


def parse_sslv2_client_hello(record: bytes) -> ClientHello:
    """An SSLv2-format CLIENT-HELLO (message type 1) that offers SSLv3 or TLS."""
    r = _Reader(record)
    if r.uint(1) != 1:
        raise ParseError("not an SSLv2 CLIENT-HELLO")
    version = r.uint(2)
    specs_len, session_len, challenge_len = r.uint(2), r.uint(2), r.uint(2)
    if specs_len % 3:
        raise ParseError("SSLv2 cipher specs are 3 bytes each")  # RFC 5246 E.2
    specs = r.take(specs_len)
    session_id = r.take(session_len)
    challenge = r.take(challenge_len)
    if not 16 <= challenge_len <= 32:
        raise ParseError("bad SSLv2 challenge length")
    # 3-byte SSLv2 cipher specs; those with a zero first byte are TLS cipher suites
    suites = b"".join(specs[i + 1 : i + 3] for i in range(0, len(specs), 3) if specs[i] == 0)
    random = challenge.rjust(32, b"\x00")  # RFC 5246 Appendix E.2
    return ClientHello(version, random, session_id, suites, {})


def parse_server_hello(body: bytes) -> ServerHello:
    r = _Reader(body)
    version = r.uint(2)
    random = r.take(32)
    session_id = r.vector(1)
    suite = r.uint(2)
    r.uint(1)  # compression method
    extensions = _extensions(r)
    selected = extensions.get(EXT_SUPPORTED_VERSIONS)
    if selected is not None and len(selected) == 2:
        version = int.from_bytes(selected, "big")
    return ServerHello(version, random, session_id, suite, extensions)


def parse_server_hello_tls13_draft(body: bytes) -> ServerHello:
    """Draft TLS 1.3 (0x7fXX) ServerHello: version, random, suite; no session id."""
    r = _Reader(body)
    version = r.uint(2)
    random = r.take(32)
    suite = r.uint(2)
    return ServerHello(version, random, b"", suite, _extensions(r))


def first_certificate(body: bytes, tls13: bool = False) -> bytes | None:
    """The DER of the end-entity certificate of a Certificate message."""
    r = _Reader(body)
    if tls13:
        r.vector(1)  # certificate_request_context
    certs = _Reader(r.vector(3))
    if not certs.remaining:
        return None
    return certs.vector(3)


def rsa_encrypted_pre_master(body: bytes, ssl3: bool) -> bytes:
    """The RSA-encrypted pre-master secret of a ClientKeyExchange.

    TLS prefixes it with a two-byte length; SSLv3 (and some old TLS 1.0 stacks) do not.
    """
    if not ssl3 and len(body) >= 2 and int.from_bytes(body[:2], "big") == len(body) - 2:
        return body[2:]
    return body


def session_ticket(body: bytes, tls13: bool) -> bytes:
    r = _Reader(body)
    r.uint(4)  # lifetime
    if tls13:
        r.uint(4)  # age_add
        r.vector(1)  # nonce
    return r.vector(2)
