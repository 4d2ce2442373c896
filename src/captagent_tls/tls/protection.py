"""Record protection: open (decrypt and authenticate) one TLS record with the keys of one
direction.  Every decryptor checks the tag or MAC before anything is returned; a failure raises
``RecordAuthError`` and the caller drops the record.

Cipher objects are built once per direction; each decryptor counts its own sequence number.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from hmac import compare_digest
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers import algorithms as decrepit
from cryptography.hazmat.primitives import hmac
from cryptography.hazmat.primitives.ciphers import (
    BlockCipherAlgorithm,
    Cipher,
    CipherContext,
    algorithms,
    modes,
)
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from captagent_tls.tls.keyschedule import SSL3, TLS11, TLS13, digest, hash_algorithm
from captagent_tls.tls.suites import CipherSuite

_aad = struct.Struct("!QBHH").pack
_seq = struct.Struct("!Q").pack


class RecordAuthError(Exception):
    """A record failed its tag, MAC or padding check."""


# What ``open`` returns for a record that authenticated but whose plaintext cannot be trusted:
# a CBC record of SSLv3/TLS 1.0 with Encrypt-then-MAC whose IV (the last block of the record
# before it) was not authenticated, because that record failed or was lost.  The MAC covers
# only this record's own ciphertext, so whoever changed that IV chose its first block.  The
# sequence number and the next IV move on as for any opened record.
UNPROVEN: tuple[int, bytes] = (-1, b"")


def _block_cipher(algorithm: str, key: bytes) -> BlockCipherAlgorithm:
    if algorithm == "AES":
        return algorithms.AES(key)
    if algorithm == "CAMELLIA":
        return decrepit.Camellia(key)
    if algorithm == "3DES":
        return decrepit.TripleDES(key)
    if algorithm == "DES":
        return decrepit.TripleDES(key * 3)  # EDE with K1 = K2 = K3 is single DES
    if algorithm == "SEED":
        return decrepit.SEED(key)
    if algorithm == "IDEA":
        return decrepit.IDEA(key)
    raise ValueError(f"no block cipher {algorithm}")


class Decryptor:
    """Opens the records of one direction, in order."""

    __slots__ = ("seq",)
    seq: int

    def open(self, content_type: int, version: int, fragment: bytes) -> tuple[int, bytes]:
        raise NotImplementedError

    def release(self) -> None:
        """Drop the OpenSSL context; the next record builds it again from the key."""

    def skip(self, fragment: bytes) -> None:
        """A record that could not be opened was still sent: move past it."""
        self.follow(fragment)
        self.seq += 1

    def follow(self, fragment: bytes) -> None:
        """Take from a record that could not be opened what the next one depends on, other
        than its sequence number (the chained IV of SSLv3/TLS 1.0 CBC, which is then not
        proven).  ``fragment`` may be only the record's tail."""

    def lost(self) -> None:
        """Records were lost before the next one: what it depends on is unknown."""


class LiveContexts:
    """Keeps OpenSSL cipher and MAC contexts for the most recently started decryptors only.

    A context costs about 2.4 KB of C memory (AES-128-GCM, measured by RSS over 20,000), and
    an agent may hold 100,000 idle sessions: their keys stay, their contexts go, and come back
    when a record arrives (AES-GCM: 0.9 us to build, against 0.7 us to open a 700-byte record
    and about 16 us for the agent's whole work per SIP message).  Contexts are admitted when
    they are built and the oldest built goes first: no bookkeeping per record, and an active
    session whose context went simply builds it again.  2,048 contexts (1,024 sessions busy at
    once) hold 5 MB; 8,192 held 20 MB, a tenth of what 100,000 idle sessions cost in all.
    """

    def __init__(self, limit: int = 2048):
        self.limit = limit
        self._live: dict[Decryptor, None] = {}  # insertion-ordered

    def admit(self, decryptor: Decryptor) -> None:
        live = self._live
        live.pop(decryptor, None)
        live[decryptor] = None
        if len(live) > self.limit:
            oldest = next(iter(live))
            del live[oldest]
            oldest.release()

    def forget(self, decryptor: Decryptor) -> None:
        """Its connection is over: the context (and the key in it) goes now."""
        self._live.pop(decryptor, None)
        decryptor.release()


LIVE_CONTEXTS = LiveContexts()


class AeadProfile(NamedTuple):
    """What every AEAD decryptor of one suite and version shares (kept once, not per session)."""

    tls13: bool
    header_aad: bool  # drafts of TLS 1.3 before 25 authenticated no additional data
    tag_len: int
    explicit: int  # bytes of explicit nonce in each record (TLS 1.2 GCM/CCM), else 0
    algorithm: str


@lru_cache(maxsize=64)
def aead_profile(suite: CipherSuite, version: int) -> AeadProfile:
    tls13 = version >= TLS13
    return AeadProfile(
        tls13,
        not 0x7F00 <= version < 0x7F19,
        suite.tag_len,
        0 if tls13 else suite.explicit_nonce_len,
        suite.algorithm,
    )


class AeadDecryptor(Decryptor):
    """AES-GCM, AES-CCM and ChaCha20-Poly1305, in TLS 1.2 (RFC 5288, 6655, 7905) and 1.3."""

    __slots__ = ("profile", "iv", "iv_int", "key", "aead")

    def __init__(self, suite: CipherSuite, key: bytes, iv: bytes, version: int):
        self.seq = 0
        profile = self.profile = aead_profile(suite, version)
        # the nonce is the fixed IV and the explicit part (TLS 1.2 GCM/CCM), or the IV xor
        # the sequence number: each decryptor keeps only the form it uses
        self.iv = iv if profile.explicit else b""
        self.iv_int = 0 if profile.explicit else int.from_bytes(iv, "big")
        self.key = key
        self.aead: AESGCM | AESCCM | ChaCha20Poly1305 | None = None

    @property
    def explicit(self) -> int:
        return self.profile.explicit

    def _context(self) -> AESGCM | AESCCM | ChaCha20Poly1305:
        LIVE_CONTEXTS.admit(self)
        algorithm = self.profile.algorithm
        if algorithm == "AESGCM":
            aead: AESGCM | AESCCM | ChaCha20Poly1305 = AESGCM(self.key)
        elif algorithm == "AESCCM":
            aead = AESCCM(self.key, tag_length=self.profile.tag_len)
        elif algorithm == "CHACHA20":
            aead = ChaCha20Poly1305(self.key)
        else:  # callers check CipherSuite.supported first
            raise ValueError(f"no AEAD {algorithm!r}")
        self.aead = aead
        return aead

    def release(self) -> None:
        self.aead = None

    def open(self, content_type: int, version: int, fragment: bytes) -> tuple[int, bytes]:
        aead = self.aead or self._context()
        seq = self.seq
        tls13, header_aad, tag_len, explicit, _ = self.profile
        if explicit:
            nonce = self.iv + fragment[:explicit]
            ciphertext = fragment[explicit:]
        else:
            nonce = (self.iv_int ^ seq).to_bytes(12, "big")
            ciphertext = fragment
        if tls13:
            aad = struct.pack("!BHH", content_type, version, len(fragment)) if header_aad else b""
        else:
            size = len(ciphertext) - tag_len
            if size < 0:
                raise RecordAuthError("record shorter than its tag")
            aad = _aad(seq, content_type, version, size)
        try:
            plaintext = aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise RecordAuthError("authentication tag mismatch") from None
        self.seq = seq + 1
        if tls13:
            inner = plaintext.rstrip(b"\x00")
            if not inner:
                raise RecordAuthError("TLS 1.3 record without a content type")
            return inner[-1], inner[:-1]
        return content_type, plaintext


class _MacCheck:
    """HMAC (or the SSLv3 MAC) over the record, keyed once per direction."""

    __slots__ = ("size", "ssl3", "hash_name", "mac_key", "keyed", "pad1", "pad2")

    def __init__(self, suite: CipherSuite, mac_key: bytes, version: int):
        self.size = suite.mac_len
        self.ssl3 = version == SSL3
        self.hash_name = suite.mac_hash
        self.mac_key = mac_key
        self.keyed: hmac.HMAC | None = None  # built on first use (see LiveContexts)
        pad = 48 if suite.mac_hash == "md5" else 40
        self.pad1, self.pad2 = b"\x36" * pad, b"\x5c" * pad

    def compute(self, seq: int, content_type: int, version: int, data: bytes) -> bytes:
        if self.ssl3:
            inner = digest(
                self.hash_name,
                self.mac_key,
                self.pad1,
                _seq(seq),
                struct.pack("!BH", content_type, len(data)),
                data,
            )
            return digest(self.hash_name, self.mac_key, self.pad2, inner)
        if self.keyed is None:
            self.keyed = hmac.HMAC(self.mac_key, hash_algorithm(self.hash_name))
        mac = self.keyed.copy()
        mac.update(_aad(seq, content_type, version, len(data)))
        mac.update(data)
        return mac.finalize()

    def verify(self, seq: int, content_type: int, version: int, data: bytes, tag: bytes) -> None:
        if not compare_digest(self.compute(seq, content_type, version, data), tag):
            raise RecordAuthError("MAC mismatch")


class CbcDecryptor(Decryptor):
    """CBC suites: MAC-then-encrypt (with the padding check) or Encrypt-then-MAC (RFC 7366).

    TLS 1.1+ carries an explicit IV per record; SSLv3 and TLS 1.0 chain it: a record's IV
    is the last ciphertext block of the one before.
    """

    __slots__ = (
        "block",
        "explicit_iv",
        "etm",
        "ssl3",
        "mac",
        "algorithm",
        "chained_iv",
        "iv_proven",
    )

    def __init__(
        self,
        suite: CipherSuite,
        key: bytes,
        mac_key: bytes,
        iv: bytes,
        version: int,
        encrypt_then_mac: bool,
    ):
        self.seq = 0
        self.block = suite.iv_len
        self.explicit_iv = version >= TLS11
        self.etm = encrypt_then_mac
        self.ssl3 = version == SSL3
        self.mac = _MacCheck(suite, mac_key, version)
        self.algorithm = _block_cipher(suite.algorithm, key)
        self.chained_iv: bytes | None = iv  # None: unknown (lost with the record before)
        self.iv_proven = True  # from the key block, or the last block of an opened record

    def release(self) -> None:
        self.mac.keyed = None

    def follow(self, fragment: bytes) -> None:
        if not self.explicit_iv:
            body = fragment[: -self.mac.size] if self.etm else fragment
            self.chained_iv = body[-self.block :] if len(body) >= self.block else None
            self.iv_proven = False

    def lost(self) -> None:
        if not self.explicit_iv:
            self.chained_iv = None
            self.iv_proven = False

    def _decrypt(self, data: bytes, iv: bytes) -> bytes:
        if self.explicit_iv:
            iv, data = data[: self.block], data[self.block :]
        return Cipher(self.algorithm, modes.CBC(iv)).decryptor().update(data)

    def open(self, content_type: int, version: int, fragment: bytes) -> tuple[int, bytes]:
        if self.mac.keyed is None:
            LIVE_CONTEXTS.admit(self)  # (the MAC context is built on first use)
        seq = self.seq
        mac_len = self.mac.size
        block = self.block
        chained = self.explicit_iv is False
        if self.etm:
            body, tag = fragment[:-mac_len], fragment[-mac_len:]
            if len(body) % block or len(tag) != mac_len or not body:
                raise RecordAuthError("bad CBC record length")
            self.mac.verify(seq, content_type, version, body, tag)
            iv = self.chained_iv
            if chained and (iv is None or not self.iv_proven):
                # authentic ciphertext, but its first block depends on an IV nobody vouches
                # for: drop it; its own last block is a proven IV for the next record
                self.chained_iv, self.iv_proven = body[-block:], True
                self.seq = seq + 1
                return UNPROVEN
            plaintext = self._strip_padding(self._decrypt(body, iv or b""))
            if chained:
                self.chained_iv = body[-block:]
            self.seq = seq + 1
            return content_type, plaintext
        if len(fragment) % block or len(fragment) < mac_len + 1:
            raise RecordAuthError("bad CBC record length")
        iv = self.chained_iv
        if chained and iv is None:
            raise RecordAuthError("the IV was lost with the record before")
        # MAC-then-encrypt: the MAC covers every plaintext byte, so a wrong IV fails it
        content = self._strip_padding(self._decrypt(fragment, iv or b""))
        if len(content) < mac_len:
            raise RecordAuthError("record shorter than its MAC")
        data, tag = content[: len(content) - mac_len], content[len(content) - mac_len :]
        self.mac.verify(seq, content_type, version, data, tag)
        if chained:
            self.chained_iv, self.iv_proven = fragment[-block:], True
        self.seq = seq + 1
        return content_type, data

    def _strip_padding(self, plaintext: bytes) -> bytes:
        if not plaintext:
            raise RecordAuthError("empty CBC record")
        pad = plaintext[-1]
        if pad + 1 > len(plaintext):
            raise RecordAuthError("bad CBC padding")
        if self.ssl3:
            if pad >= self.block:
                raise RecordAuthError("bad CBC padding")
        elif plaintext[-pad - 1 :] != bytes([pad]) * (pad + 1):
            raise RecordAuthError("bad CBC padding")
        return plaintext[: -pad - 1]


class StreamDecryptor(Decryptor):
    """RC4 and the NULL cipher: the MAC follows the content."""

    __slots__ = ("mac", "stream")

    def __init__(self, suite: CipherSuite, key: bytes, mac_key: bytes, version: int):
        self.seq = 0
        self.mac = _MacCheck(suite, mac_key, version)
        self.stream: CipherContext | None = None
        if suite.kind == "stream":
            self.stream = Cipher(decrepit.ARC4(key), mode=None).decryptor()

    def release(self) -> None:
        self.mac.keyed = None  # the RC4 state cannot be rebuilt: it stays

    def open(self, content_type: int, version: int, fragment: bytes) -> tuple[int, bytes]:
        if self.mac.keyed is None:
            LIVE_CONTEXTS.admit(self)  # (the MAC context is built on first use)
        plaintext = self.stream.update(fragment) if self.stream is not None else fragment
        mac_len = self.mac.size
        if len(plaintext) < mac_len:
            raise RecordAuthError("record shorter than its MAC")
        data, tag = plaintext[: len(plaintext) - mac_len], plaintext[len(plaintext) - mac_len :]
        self.mac.verify(self.seq, content_type, version, data, tag)
        self.seq += 1
        return content_type, data


def make_decryptor(
    suite: CipherSuite,
    version: int,
    key: bytes,
    iv: bytes,
    mac_key: bytes,
    encrypt_then_mac: bool = False,
) -> Decryptor:
    if suite.kind == "aead":
        return AeadDecryptor(suite, key, iv, version)
    if suite.kind == "cbc":
        return CbcDecryptor(suite, key, mac_key, iv, version, encrypt_then_mac)
    return StreamDecryptor(suite, key, mac_key, version)
