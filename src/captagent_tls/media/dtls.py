"""DTLS-SRTP (RFC 5764): the SRTP master keys of a DTLS handshake on the media path, from the
hellos seen on the wire and the secrets of a key log.

What is read of DTLS: records with 13-byte headers (DTLS 1.0 and 1.2, RFC 6347 §4.1; also
DTLS 1.3's DTLSPlaintext, RFC 9147 §4), epoch 0 handshake fragments reassembled (bounded) into
the ClientHello and ServerHello, and from those the randoms, the version, the cipher suite and
the use_srtp extension (RFC 5764 §4.1.1): the profiles the client offered, the one the server
chose.  DTLS 1.3's unified headers (RFC 9147 §4: encrypted records) are recognised and
skipped; its server picks the profile in the encrypted EncryptedExtensions, so then every
offered profile is a candidate and SRTP authentication decides.

The keys: DTLS 1.2 and 1.0 -- the TLS PRF of the suite (RFC 5705) over the key log's master
secret (``CLIENT_RANDOM`` line), label ``EXTRACTOR-dtls_srtp``, seed client_random +
server_random; DTLS 1.3 -- the TLS 1.3 exporter (RFC 8446 §7.5) from ``EXPORTER_SECRET``,
with DTLS 1.3's ``dtls13`` label prefix (RFC 9147 §5.9).  The material is
client key | server key | client salt | server salt (RFC 5764 §4.2); the DTLS client (the
sender of the ClientHello) protects what it sends with the client half.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from captagent_tls.media.srtp import PROFILES, MasterKey, SrtpSuite
from captagent_tls.message import Endpoint
from captagent_tls.tls import handshake as hsk
from captagent_tls.tls import suites as tls_suites
from captagent_tls.tls.keys import KeyStore
from captagent_tls.tls.keyschedule import TLS11, TLS12, digest, hash_algorithm, prf

DTLS10 = 0xFEFF
DTLS12 = 0xFEFD
DTLS13 = 0xFEFC
VERSION_NAMES = {DTLS10: "DTLSv1.0", DTLS12: "DTLSv1.2", DTLS13: "DTLSv1.3"}
CONTENT_CHANGE_CIPHER_SPEC, CONTENT_ALERT, CONTENT_HANDSHAKE, CONTENT_APPLICATION = 20, 21, 22, 23
CONTENT_ACK = 26  # DTLS 1.3 (RFC 9147 §7)
EXT_USE_SRTP = 14
HELLO_VERIFY_REQUEST = 3
EXPORTER_LABEL = b"EXTRACTOR-dtls_srtp"
MAX_MESSAGE_BYTES = 16 * 1024  # a hello longer than this is not reassembled
MAX_ASSOCIATIONS = 10_000

_RECORD = struct.Struct("!BHHHIH")  # type, version, epoch, sequence (48 bits: 16 + 32), length
_FRAGMENT = struct.Struct("!BHBHBHBH")  # type, length(24), message_seq, offset(24), length(24)


@dataclass(frozen=True, slots=True)
class Record:
    content_type: int
    version: int
    epoch: int
    sequence: int
    fragment: bytes


@dataclass(frozen=True, slots=True)
class Records:
    """What one datagram holds: the plaintext-header records, and whether encrypted DTLS 1.3
    records (unified headers) or bytes that are not DTLS were skipped."""

    records: tuple[Record, ...]
    encrypted_skipped: int = 0
    malformed: bool = False


def is_dtls(payload: bytes) -> bool:
    """RFC 7983 §7: a first byte of 20-63 is DTLS on a port shared with RTP and STUN."""
    return bool(payload) and 20 <= payload[0] <= 63


def parse_records(datagram: bytes) -> Records:
    """The records of one datagram; never raises."""
    records: list[Record] = []
    pos, n = 0, len(datagram)
    skipped = 0
    while pos < n:
        first = datagram[pos]
        if first & 0xE0 == 0x20:  # DTLS 1.3 unified header: 001CSLEE
            if first & 0x10:  # a connection ID of a length only the peers know: stop here
                return Records(tuple(records), skipped + 1)
            header = 1 + (2 if first & 0x08 else 1)
            if first & 0x04:
                if pos + header + 2 > n:
                    return Records(tuple(records), skipped, True)
                length = int.from_bytes(datagram[pos + header : pos + header + 2], "big")
                header += 2
            else:
                length = n - pos - header
            if pos + header + length > n:
                return Records(tuple(records), skipped, True)
            skipped += 1
            pos += header + length
            continue
        if n - pos < 13:
            return Records(tuple(records), skipped, True)
        content_type, version, epoch, seq_high, seq_low, length = _RECORD.unpack_from(datagram, pos)
        if not 20 <= content_type <= 63 or version >> 8 != 0xFE or pos + 13 + length > n:
            return Records(tuple(records), skipped, True)
        fragment = datagram[pos + 13 : pos + 13 + length]
        records.append(Record(content_type, version, epoch, (seq_high << 32) | seq_low, fragment))
        pos += 13 + length
    return Records(tuple(records), skipped)


@dataclass(frozen=True, slots=True)
class Fragment:
    msg_type: int
    length: int  # of the whole message
    message_seq: int
    offset: int
    data: bytes


def parse_fragments(fragment: bytes) -> list[Fragment]:
    """The handshake fragments of one epoch-0 handshake record (RFC 6347 §4.2.2); stops at
    the first that does not fit."""
    out: list[Fragment] = []
    pos = 0
    while len(fragment) - pos >= 12:
        msg_type = fragment[pos]
        length = int.from_bytes(fragment[pos + 1 : pos + 4], "big")
        message_seq = int.from_bytes(fragment[pos + 4 : pos + 6], "big")
        offset = int.from_bytes(fragment[pos + 6 : pos + 9], "big")
        frag_length = int.from_bytes(fragment[pos + 9 : pos + 12], "big")
        end = pos + 12 + frag_length
        if end > len(fragment) or offset + frag_length > length:
            break
        out.append(Fragment(msg_type, length, message_seq, offset, fragment[pos + 12 : end]))
        pos = end
    return out


class _Message:
    """One handshake message being reassembled."""

    __slots__ = ("msg_type", "message_seq", "data", "filled", "missing")

    def __init__(self, msg_type: int, message_seq: int, length: int) -> None:
        self.msg_type = msg_type
        self.message_seq = message_seq
        self.data = bytearray(length)
        self.filled = bytearray(length)
        self.missing = length

    def add(self, offset: int, data: bytes) -> bool:
        """True once every byte has arrived."""
        end = offset + len(data)
        self.missing -= self.filled[offset:end].count(0)
        self.data[offset:end] = data
        self.filled[offset:end] = b"\x01" * len(data)
        return self.missing == 0


def parse_dtls_client_hello(body: bytes) -> hsk.ClientHello:
    """A DTLS ClientHello: a TLS ClientHello with a cookie after the session ID (RFC 6347
    §4.2.1).  The cookie is cut out and the rest read by the TLS parser."""
    at = 2 + 32
    if len(body) < at + 1:
        raise hsk.ParseError("message is truncated")
    cookie_at = at + 1 + body[at]
    if len(body) < cookie_at + 1:
        raise hsk.ParseError("message is truncated")
    after_cookie = cookie_at + 1 + body[cookie_at]
    if len(body) < after_cookie:
        raise hsk.ParseError("message is truncated")
    return hsk.parse_client_hello(body[:cookie_at] + body[after_cookie:])


def parse_use_srtp(data: bytes) -> tuple[tuple[int, ...], bytes]:
    """The use_srtp extension (RFC 5764 §4.1.1): the profiles (two bytes each) and the MKI."""
    if len(data) < 2:
        raise hsk.ParseError("use_srtp is truncated")
    length = int.from_bytes(data[:2], "big")
    if length % 2 or 2 + length + 1 > len(data):
        raise hsk.ParseError("use_srtp profiles do not fit")
    profiles = struct.unpack_from(f"!{length // 2}H", data, 2)
    mki_length = data[2 + length]
    mki = data[3 + length : 3 + length + mki_length]
    if len(mki) != mki_length:
        raise hsk.ParseError("use_srtp MKI does not fit")
    return tuple(profiles), mki


@dataclass(slots=True)
class DtlsAssociation:
    """One DTLS handshake on a media 5-tuple, as far as the hellos tell it."""

    client: Endpoint  # the sender of the ClientHello
    server: Endpoint
    client_random: bytes = b""
    server_random: bytes = b""
    version: int = 0  # negotiated (the ServerHello's supported_versions wins)
    cipher_suite: int = 0
    offered_profiles: tuple[int, ...] = ()
    selected_profile: int | None = None  # None in DTLS 1.3 (encrypted) or before the hello
    mki: bytes = b""
    last_ns: int = 0
    _messages: dict[tuple[bool, int], _Message] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Both hellos seen: enough, with a key log, for the SRTP keys."""
        return bool(self.client_random and self.server_random)

    def candidate_suites(self) -> list[SrtpSuite]:
        """The SRTP suites the keys may be for: the one chosen, or every one offered (and
        known) when the choice is encrypted."""
        if self.selected_profile is not None:
            suite = PROFILES.get(self.selected_profile)
            return [suite] if suite else []
        if self.version != DTLS13:
            return []  # DTLS 1.2 says its choice in the clear: no use_srtp, no SRTP
        return [PROFILES[p] for p in self.offered_profiles if p in PROFILES]


@dataclass(frozen=True, slots=True)
class SrtpKeyMaterial:
    """The SRTP master keys of one DTLS-SRTP association for one profile."""

    suite: SrtpSuite
    client: MasterKey  # protects what the DTLS client sends
    server: MasterKey


def split_keying_material(material: bytes, suite: SrtpSuite) -> SrtpKeyMaterial:
    """RFC 5764 §4.2: client_write_SRTP_master_key | server_write_SRTP_master_key |
    client_write_SRTP_master_salt | server_write_SRTP_master_salt."""
    k, s = suite.key_length, suite.salt_length
    if len(material) != 2 * (k + s):
        raise ValueError(f"{suite.name} needs {2 * (k + s)} bytes of keying material")
    return SrtpKeyMaterial(
        suite,
        MasterKey(material[:k], material[2 * k : 2 * k + s]),
        MasterKey(material[k : 2 * k], material[2 * k + s :]),
    )


def _expand_label(
    hash_name: str, secret: bytes, label: bytes, context: bytes, length: int, prefix: bytes
) -> bytes:
    """HKDF-Expand-Label with a label prefix: ``tls13 `` (RFC 8446 §7.1) or ``dtls13``
    (RFC 9147 §5.9).  keyschedule.hkdf_expand_label has the TLS prefix only."""
    full = prefix + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context
    return HKDFExpand(hash_algorithm(hash_name), length, info).derive(secret)


def tls13_exporter(
    hash_name: str,
    exporter_secret: bytes,
    label: bytes,
    context: bytes,
    length: int,
    prefix: bytes = b"dtls13",
) -> bytes:
    """RFC 8446 §7.5: HKDF-Expand-Label(Derive-Secret(exporter_secret, label, ""),
    "exporter", Hash(context), length)."""
    size = hash_algorithm(hash_name).digest_size
    secret = _expand_label(hash_name, exporter_secret, label, digest(hash_name, b""), size, prefix)
    return _expand_label(hash_name, secret, b"exporter", digest(hash_name, context), length, prefix)


def keying_material(
    association: DtlsAssociation, keys: KeyStore, suite: SrtpSuite
) -> SrtpKeyMaterial | None:
    """The SRTP keys of a complete association for ``suite``, or None while the key log has
    no secret for its client random (or the cipher suite is unknown)."""
    if not association.complete:
        return None
    secrets = keys.secrets_for(association.client_random)
    if secrets is None:
        return None
    cipher = tls_suites.lookup(association.cipher_suite)
    if cipher is None:
        return None
    length = 2 * suite.master_length
    if association.version == DTLS13:
        exporter = secrets.tls13.get("EXPORTER_SECRET")
        if exporter is None:
            return None
        material = tls13_exporter(cipher.prf_hash, exporter, EXPORTER_LABEL, b"", length)
    else:
        if secrets.master_secret is None:
            return None
        version = TLS12 if association.version == DTLS12 else TLS11
        material = prf(
            version,
            cipher.prf_hash,
            secrets.master_secret,
            EXPORTER_LABEL,
            association.client_random + association.server_random,
            length,
        )
    return split_keying_material(material, suite)


class DtlsTracker:
    """DTLS hellos per association (client endpoint, server endpoint), bounded."""

    def __init__(self, max_associations: int = MAX_ASSOCIATIONS) -> None:
        self.max_associations = max_associations
        self._associations: OrderedDict[tuple[Endpoint, Endpoint], DtlsAssociation] = OrderedDict()
        self.evictions = 0
        self.malformed = 0
        self.encrypted_records = 0

    def __len__(self) -> int:
        return len(self._associations)

    def association(self, a: Endpoint, b: Endpoint) -> DtlsAssociation | None:
        """The association between two endpoints, whichever is the client."""
        return self._associations.get((a, b)) or self._associations.get((b, a))

    def datagram(
        self, src: Endpoint, dst: Endpoint, payload: bytes, ts_ns: int = 0
    ) -> DtlsAssociation | None:
        """Feed one datagram; the association when this datagram completed its hellos."""
        parsed = parse_records(payload)
        self.encrypted_records += parsed.encrypted_skipped
        if parsed.malformed:
            self.malformed += 1
        completed = None
        for record in parsed.records:
            if record.content_type != CONTENT_HANDSHAKE or record.epoch != 0:
                continue
            for fragment in parse_fragments(record.fragment):
                done = self._fragment(src, dst, fragment, ts_ns)
                if done is not None:
                    completed = done
        return completed

    def _fragment(
        self, src: Endpoint, dst: Endpoint, fragment: Fragment, ts_ns: int
    ) -> DtlsAssociation | None:
        if fragment.msg_type not in (hsk.CLIENT_HELLO, hsk.SERVER_HELLO):
            return None
        if fragment.length > MAX_MESSAGE_BYTES:
            self.malformed += 1
            return None
        from_client = fragment.msg_type == hsk.CLIENT_HELLO
        key = (src, dst) if from_client else (dst, src)
        association = self._associations.get(key)
        if association is None:
            if not from_client:
                return None  # a ServerHello for a ClientHello we never saw
            if len(self._associations) >= self.max_associations:
                self._associations.popitem(last=False)
                self.evictions += 1
            association = self._associations[key] = DtlsAssociation(src, dst)
        else:
            self._associations.move_to_end(key)
        association.last_ns = ts_ns
        slot = (from_client, fragment.message_seq)
        message = association._messages.get(slot)
        if message is None or len(message.data) != fragment.length:
            if len(association._messages) >= 8:
                association._messages.clear()
            message = association._messages[slot] = _Message(
                fragment.msg_type, fragment.message_seq, fragment.length
            )
        if not message.add(fragment.offset, fragment.data):
            return None
        del association._messages[slot]
        try:
            self._hello(association, from_client, bytes(message.data))
        except hsk.ParseError:
            self.malformed += 1
            return None
        return association if association.complete else None

    @staticmethod
    def _hello(association: DtlsAssociation, from_client: bool, body: bytes) -> None:
        if from_client:
            hello = parse_dtls_client_hello(body)
            profiles: tuple[int, ...] = ()
            mki = b""
            if EXT_USE_SRTP in hello.extensions:
                profiles, mki = parse_use_srtp(hello.extensions[EXT_USE_SRTP])
            if hello.random != association.client_random:
                # a new handshake (or the first): what the server said belongs to the old one
                association.server_random = b""
                association.selected_profile = None
            association.client_random = hello.random
            association.offered_profiles = profiles
            association.mki = mki
            return
        server = hsk.parse_server_hello(body)
        if server.is_hello_retry:
            return
        association.server_random = server.random
        association.version = server.version
        association.cipher_suite = server.cipher_suite
        if EXT_USE_SRTP in server.extensions:
            chosen, mki = parse_use_srtp(server.extensions[EXT_USE_SRTP])
            association.selected_profile = chosen[0] if len(chosen) == 1 else None
            association.mki = mki
        else:
            association.selected_profile = None  # declined (1.2), or encrypted (1.3)

    def expire(self, before_ns: int) -> int:
        """Drop associations last seen before ``before_ns``; how many went."""
        stale = [k for k, a in self._associations.items() if a.last_ns < before_ns]
        for key in stale:
            del self._associations[key]
        return len(stale)


def version_name(version: int) -> str:
    return VERSION_NAMES.get(version, f"0x{version:04X}")


def candidate_materials(association: DtlsAssociation, keys: KeyStore) -> Sequence[SrtpKeyMaterial]:
    """The keys for every candidate suite (one when the server's choice was seen)."""
    out = []
    for suite in association.candidate_suites():
        material = keying_material(association, keys, suite)
        if material is not None:
            out.append(material)
    return out
