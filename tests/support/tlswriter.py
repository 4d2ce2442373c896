"""A small TLS writer for specification tests: builds the records of TLS 1.2 and TLS 1.3
sessions byte by byte, with real ciphers (pyca/cryptography's AES-GCM and AES-CBC) and the key
schedule written here again with the standard library (``hmac``, ``hashlib``), independently of
the product's, and wraps them in Ethernet/IPv4/TCP frames.

The secrets are chosen by the test and given to the product as key-log lines, so no key
exchange is needed: the ClientKeyExchange and ServerKeyExchange carry placeholder bytes, as the
product never reads them when a key log names the session.  What a test controls is exactly
what the rules are about: which records are sent, in what order, under which keys.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from captagent_tls.capture import Frame

LINKTYPE_ETHERNET = 1
CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA = 20, 21, 22, 23
TLS12, TLS13 = 0x0303, 0x0304
CLIENT_HELLO, SERVER_HELLO, NEW_SESSION_TICKET, END_OF_EARLY_DATA = 1, 2, 4, 5
ENCRYPTED_EXTENSIONS, CERTIFICATE, SERVER_HELLO_DONE = 8, 11, 14
CLIENT_KEY_EXCHANGE, FINISHED, KEY_UPDATE = 16, 20, 24
GCM128_SHA256 = 0xC02F  # TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
CBC128_SHA = 0xC013  # TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA
TLS13_AES128 = 0x1301
EXT_ENCRYPT_THEN_MAC, EXT_SUPPORTED_VERSIONS, EXT_EARLY_DATA = 22, 43, 42


# -- the key schedule, from the RFCs, with the standard library ---------------------------


def p_sha256(secret: bytes, seed: bytes, length: int) -> bytes:
    """RFC 5246 §5 P_SHA256."""
    out, a = b"", seed
    while len(out) < length:
        a = hmac.new(secret, a, hashlib.sha256).digest()
        out += hmac.new(secret, a + seed, hashlib.sha256).digest()
    return out[:length]


def p_hash(name: str, secret: bytes, seed: bytes, length: int) -> bytes:
    """RFC 5246 §5 P_hash."""
    out, a = b"", seed
    while len(out) < length:
        a = hmac.new(secret, a, name).digest()
        out += hmac.new(secret, a + seed, name).digest()
    return out[:length]


def prf12(secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    return p_sha256(secret, label + seed, length)


def prf10(secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """RFC 2246 §5: P_MD5 over the first half of the secret xor P_SHA-1 over the second."""
    half = (len(secret) + 1) // 2
    md5 = p_hash("md5", secret[:half], label + seed, length)
    sha = p_hash("sha1", secret[-half:], label + seed, length)
    return bytes(a ^ b for a, b in zip(md5, sha, strict=True))


def hkdf_expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """RFC 8446 §7.1, SHA-256."""
    full = b"tls13 " + label
    info = struct.pack("!H", length) + bytes([len(full)]) + full + bytes([len(context)]) + context
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def handshake_message(msg_type: int, body: bytes) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def record(content_type: int, fragment: bytes, version: int = TLS12) -> bytes:
    return struct.pack("!BHH", content_type, version, len(fragment)) + fragment


def extensions(items: dict[int, bytes]) -> bytes:
    body = b"".join(struct.pack("!HH", k, len(v)) + v for k, v in items.items())
    return struct.pack("!H", len(body)) + body


def client_hello(random: bytes, suites: list[int], exts: dict[int, bytes]) -> bytes:
    body = (
        struct.pack("!H", TLS12)
        + random
        + b"\x00"
        + struct.pack("!H", 2 * len(suites))
        + b"".join(struct.pack("!H", s) for s in suites)
        + b"\x01\x00"
        + extensions(exts)
    )
    return handshake_message(CLIENT_HELLO, body)


def server_hello(random: bytes, suite: int, exts: dict[int, bytes], version: int = TLS12) -> bytes:
    body = (
        struct.pack("!H", version)
        + random
        + b"\x00"
        + struct.pack("!H", suite)
        + b"\x00"
        + extensions(exts)
    )
    return handshake_message(SERVER_HELLO, body)


# -- record protection ------------------------------------------------------------------------


class GcmWriter:
    """TLS 1.2 AES-GCM (RFC 5288): explicit nonce = the sequence number."""

    def __init__(self, key: bytes, salt: bytes):
        self.aead, self.salt, self.seq = AESGCM(key), salt, 0

    def seal(self, content_type: int, data: bytes) -> bytes:
        explicit = struct.pack("!Q", self.seq)
        aad = struct.pack("!QBHH", self.seq, content_type, TLS12, len(data))
        self.seq += 1
        return record(content_type, explicit + self.aead.encrypt(self.salt + explicit, data, aad))


class CbcWriter:
    """AES-CBC with HMAC-SHA1, MAC-then-encrypt or Encrypt-then-MAC; TLS 1.0 chains the IV
    (the last block of the record before), TLS 1.1+ sends an explicit one."""

    def __init__(self, key: bytes, mac_key: bytes, iv: bytes, version: int, etm: bool):
        self.key, self.mac_key, self.iv = key, mac_key, iv
        self.version, self.etm, self.seq = version, etm, 0

    def _mac(self, content_type: int, data: bytes) -> bytes:
        header = struct.pack("!QBHH", self.seq, content_type, self.version, len(data))
        return hmac.new(self.mac_key, header + data, hashlib.sha1).digest()

    def seal(self, content_type: int, data: bytes) -> bytes:
        explicit = self.version > 0x0301
        iv = os.urandom(16) if explicit else self.iv
        plain = data if self.etm else data + self._mac(content_type, data)
        pad = 15 - len(plain) % 16
        plain += bytes([pad]) * (pad + 1)
        encryptor = Cipher(algorithms.AES(self.key), modes.CBC(iv)).encryptor()
        body = (iv if explicit else b"") + encryptor.update(plain) + encryptor.finalize()
        if self.etm:
            body += self._mac(content_type, body)
            self.iv = body[-36:-20]
        else:
            self.iv = body[-16:]
        self.seq += 1
        return record(content_type, body, self.version)


class Tls13Writer:
    """TLS 1.3 AES-128-GCM records: inner content type, per-record nonce from the sequence."""

    def __init__(self, secret: bytes):
        self.secret = secret
        self._keys()

    def _keys(self) -> None:
        self.aead = AESGCM(hkdf_expand_label(self.secret, b"key", b"", 16))
        self.iv = int.from_bytes(hkdf_expand_label(self.secret, b"iv", b"", 12), "big")
        self.seq = 0

    def seal(self, content_type: int, data: bytes) -> bytes:
        inner = data + bytes([content_type])
        header = struct.pack("!BHH", APPLICATION_DATA, TLS12, len(inner) + 16)
        nonce = (self.iv ^ self.seq).to_bytes(12, "big")
        self.seq += 1
        return header + self.aead.encrypt(nonce, inner, header)

    def update(self) -> None:
        """KeyUpdate: the next application traffic secret (RFC 8446 §7.2)."""
        self.secret = hkdf_expand_label(self.secret, b"traffic upd", b"", 32)
        self._keys()


# -- TCP/IP framing ---------------------------------------------------------------------------


@dataclass
class TcpConversation:
    """Frames of one TCP connection between 10.0.0.1 (client) and 10.0.0.2 (server)."""

    client_port: int = 40000
    server_port: int = 5061
    ts_ns: int = 1_700_000_000_000_000_000
    frames: list[Frame] = field(default_factory=list)
    seq: list[int] = field(default_factory=lambda: [1000, 5000])

    def _frame(
        self,
        direction: int,
        flags: int,
        payload: bytes,
        seq: int | None = None,
        ack: int | None = None,
    ) -> Frame:
        src, dst = (b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02")[:: 1 if direction == 0 else -1]
        ports = (self.client_port, self.server_port)[:: 1 if direction == 0 else -1]
        seq = self.seq[direction] if seq is None else seq
        ack = self.seq[1 - direction] if ack is None else ack
        tcp = struct.pack(
            "!HHIIBBHHH", *ports, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0
        )
        total = 20 + len(tcp) + len(payload)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 6, 0, src, dst)
        ethernet = b"\x00" * 12 + b"\x08\x00"
        return Frame(self.ts_ns, LINKTYPE_ETHERNET, ethernet + ip + tcp + payload)

    def at(self, ts_ns: int) -> TcpConversation:
        self.ts_ns = ts_ns
        return self

    def open(self) -> None:
        self.frames.append(self._frame(0, 0x02, b"", ack=0))
        self.seq[0] += 1
        self.frames.append(self._frame(1, 0x12, b""))
        self.seq[1] += 1
        self.frames.append(self._frame(0, 0x10, b""))

    def send(self, direction: int, payload: bytes, *, lost: bool = False) -> None:
        """One segment; a lost one advances the sequence without being captured (the peer's
        next ACK proves it crossed the wire)."""
        frame = self._frame(direction, 0x18, payload)
        self.seq[direction] += len(payload)
        if not lost:
            self.frames.append(frame)
        self.ts_ns += 1000

    def ack(self, direction: int) -> None:
        self.frames.append(self._frame(direction, 0x10, b""))

    def close(self) -> None:
        for direction in (0, 1):
            self.frames.append(self._frame(direction, 0x11, b""))
            self.seq[direction] += 1
        self.frames.append(self._frame(0, 0x10, b""))


# -- sessions ---------------------------------------------------------------------------------


@dataclass
class Tls12Session:
    """A TLS 1.2 ECDHE session whose master secret is given by a key-log line."""

    suite: int = GCM128_SHA256
    etm: bool = False
    version: int = TLS12
    client_random: bytes = field(default_factory=lambda: os.urandom(32))
    server_random: bytes = field(default_factory=lambda: os.urandom(32))
    master: bytes = field(default_factory=lambda: os.urandom(48))
    transcript: list[bytes] = field(default_factory=list)

    def key_log_line(self) -> str:
        return f"CLIENT_RANDOM {self.client_random.hex()} {self.master.hex()}\n"

    def client_hello(self, offered: list[int] | None = None) -> bytes:
        exts = {EXT_ENCRYPT_THEN_MAC: b""} if self.etm else {}
        message = client_hello(self.client_random, offered or [self.suite], exts)
        self.transcript.append(message)
        return record(HANDSHAKE, message, 0x0301)

    def server_flight(self, suite: int | None = None, version: int | None = None) -> bytes:
        """ServerHello (naming ``suite``, which may differ from what was offered), a
        placeholder Certificate and ServerHelloDone."""
        exts = {EXT_ENCRYPT_THEN_MAC: b""} if self.etm else {}
        hello = server_hello(self.server_random, suite or self.suite, exts, version or self.version)
        messages = [
            hello,
            handshake_message(CERTIFICATE, b"\x00\x00\x00"),
            handshake_message(SERVER_HELLO_DONE, b""),
        ]
        self.transcript += messages
        return record(HANDSHAKE, b"".join(messages), self.version)

    def client_key_exchange(self) -> bytes:
        message = handshake_message(CLIENT_KEY_EXCHANGE, b"\x20" + b"\x01" * 32)
        self.transcript.append(message)
        return record(HANDSHAKE, message, self.version)

    def writers(self) -> tuple[GcmWriter | CbcWriter, GcmWriter | CbcWriter]:
        """(client's, server's) record writers, from the key block (RFC 5246 §6.3)."""
        seed = self.server_random + self.client_random
        if self.suite == GCM128_SHA256:
            block = prf12(self.master, b"key expansion", seed, 40)
            return GcmWriter(block[0:16], block[32:36]), GcmWriter(block[16:32], block[36:40])
        prf = prf12 if self.version >= TLS12 else prf10
        block = prf(self.master, b"key expansion", seed, 2 * (20 + 16 + 16))
        client_mac, server_mac = block[0:20], block[20:40]
        client_key, server_key = block[40:56], block[56:72]
        client_iv, server_iv = block[72:88], block[88:104]
        return (
            CbcWriter(client_key, client_mac, client_iv, self.version, self.etm),
            CbcWriter(server_key, server_mac, server_iv, self.version, self.etm),
        )

    def finished(
        self, from_client: bool, writer: GcmWriter | CbcWriter, tamper: bool = False
    ) -> bytes:
        label = b"client finished" if from_client else b"server finished"
        data = b"".join(self.transcript)
        if self.version >= TLS12:
            verify = prf12(self.master, label, hashlib.sha256(data).digest(), 12)
        else:
            digest = hashlib.md5(data).digest() + hashlib.sha1(data).digest()
            verify = prf10(self.master, label, digest, 12)
        if tamper:
            verify = bytes([verify[0] ^ 1]) + verify[1:]
        message = handshake_message(FINISHED, verify)
        self.transcript.append(message)
        return writer.seal(HANDSHAKE, message)


@dataclass
class Tls13Session:
    """A TLS 1.3 session whose traffic secrets are given by key-log lines."""

    client_random: bytes = field(default_factory=lambda: os.urandom(32))
    server_random: bytes = field(default_factory=lambda: os.urandom(32))
    secrets: dict[str, bytes] = field(
        default_factory=lambda: {
            name: os.urandom(32)
            for name in (
                "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
                "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                "CLIENT_TRAFFIC_SECRET_0",
                "SERVER_TRAFFIC_SECRET_0",
                "CLIENT_EARLY_TRAFFIC_SECRET",
            )
        }
    )
    transcript: list[bytes] = field(default_factory=list)

    def key_log(self, without: tuple[str, ...] = ()) -> str:
        return "".join(
            f"{name} {self.client_random.hex()} {secret.hex()}\n"
            for name, secret in self.secrets.items()
            if name not in without
        )

    def writer(self, name: str) -> Tls13Writer:
        return Tls13Writer(self.secrets[name])

    def client_hello(self, early_data: bool = False) -> bytes:
        exts = {EXT_SUPPORTED_VERSIONS: b"\x02\x03\x04"}
        if early_data:
            exts[EXT_EARLY_DATA] = b""
        message = client_hello(self.client_random, [TLS13_AES128], exts)
        self.transcript.append(message)
        return record(HANDSHAKE, message, 0x0301)

    def server_hello(self, random: bytes | None = None) -> bytes:
        message = server_hello(
            random or self.server_random, TLS13_AES128, {EXT_SUPPORTED_VERSIONS: b"\x03\x04"}
        )
        self.transcript.append(message)
        return record(HANDSHAKE, message)

    def handshake_message(self, msg_type: int, body: bytes) -> bytes:
        message = handshake_message(msg_type, body)
        self.transcript.append(message)
        return message

    def finished(self, secret_name: str) -> bytes:
        key = hkdf_expand_label(self.secrets[secret_name], b"finished", b"", 32)
        verify = hmac.new(
            key, hashlib.sha256(b"".join(self.transcript)).digest(), hashlib.sha256
        ).digest()
        return self.handshake_message(FINISHED, verify)
