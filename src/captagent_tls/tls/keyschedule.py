"""What TLS defines on top of the primitives: PRFs, master secrets, key blocks, Finished
verify_data (SSLv3 to TLS 1.2), and HKDF-Expand-Label (TLS 1.3).  pyca/cryptography does every
hash and HMAC.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

SSL3 = 0x0300
TLS10 = 0x0301
TLS11 = 0x0302
TLS12 = 0x0303
TLS13 = 0x0304

VERSION_NAMES = {
    SSL3: "SSLv3",
    TLS10: "TLSv1.0",
    TLS11: "TLSv1.1",
    TLS12: "TLSv1.2",
    TLS13: "TLSv1.3",
}

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "md5": hashes.MD5,
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
}


def version_name(version: int) -> str:
    if 0x7F00 <= version <= 0x7FFF:
        return f"TLSv1.3-draft{version & 0xFF}"
    return VERSION_NAMES.get(version, f"0x{version:04X}")


def hash_algorithm(name: str) -> hashes.HashAlgorithm:
    return _HASHES[name]()


def digest(name: str, *parts: bytes) -> bytes:
    h = hashes.Hash(hash_algorithm(name))
    for part in parts:
        h.update(part)
    return h.finalize()


def hmac_digest(name: str, key: bytes, *parts: bytes) -> bytes:
    h = hmac.HMAC(key, hash_algorithm(name))
    for part in parts:
        h.update(part)
    return h.finalize()


def _p_hash(name: str, secret: bytes, seed: bytes, length: int) -> bytes:
    out = bytearray()
    a = seed
    while len(out) < length:
        a = hmac_digest(name, secret, a)
        out += hmac_digest(name, secret, a, seed)
    return bytes(out[:length])


def prf(
    version: int, prf_hash: str, secret: bytes, label: bytes, seed: bytes, length: int
) -> bytes:
    """The TLS PRF for the version: MD5 xor SHA-1 before TLS 1.2, the suite's hash from 1.2."""
    if version >= TLS12:
        return _p_hash(prf_hash, secret, label + seed, length)
    half = (len(secret) + 1) // 2
    md5 = _p_hash("md5", secret[:half], label + seed, length)
    sha = _p_hash("sha1", secret[-half:], label + seed, length)
    return xor_bytes(md5, sha)


def xor_bytes(a: bytes, b: bytes) -> bytes:
    """XOR two byte strings of equal length, as big integers rather than byte by byte."""
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _ssl3_expand(secret: bytes, seed: bytes, length: int) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < length:
        salt = bytes([ord("A") + i]) * (i + 1)
        out += digest("md5", secret, digest("sha1", salt, secret, seed))
        i += 1
    return bytes(out[:length])


def handshake_hash(version: int, prf_hash: str, messages: Iterable[bytes]) -> bytes:
    """Hash of the handshake transcript as the PRF of the version wants it."""
    data = b"".join(messages)
    if version >= TLS12:
        return digest(prf_hash, data)
    return digest("md5", data) + digest("sha1", data)


def master_secret(
    version: int,
    prf_hash: str,
    pre_master: bytes,
    client_random: bytes,
    server_random: bytes,
    session_hash: bytes | None = None,
) -> bytes:
    """RFC 5246 §8.1, or RFC 7627 §4 when ``session_hash`` is given (Extended Master Secret)."""
    if version == SSL3:
        return _ssl3_expand(pre_master, client_random + server_random, 48)
    if session_hash is not None:
        return prf(version, prf_hash, pre_master, b"extended master secret", session_hash, 48)
    return prf(version, prf_hash, pre_master, b"master secret", client_random + server_random, 48)


def key_block(
    version: int,
    prf_hash: str,
    master: bytes,
    client_random: bytes,
    server_random: bytes,
    length: int,
) -> bytes:
    if version == SSL3:
        return _ssl3_expand(master, server_random + client_random, length)
    return prf(version, prf_hash, master, b"key expansion", server_random + client_random, length)


def finished_verify_data(
    version: int, prf_hash: str, master: bytes, from_client: bool, transcript: Iterable[bytes]
) -> bytes:
    """The verify_data a Finished message must carry (RFC 5246 §7.4.9; SSLv3 §5.6.9)."""
    if version == SSL3:
        data = b"".join(transcript)
        sender = b"CLNT" if from_client else b"SRVR"
        md5 = digest("md5", master, b"\x5c" * 48, digest("md5", data, sender, master, b"\x36" * 48))
        sha = digest(
            "sha1", master, b"\x5c" * 40, digest("sha1", data, sender, master, b"\x36" * 40)
        )
        return md5 + sha
    label = b"client finished" if from_client else b"server finished"
    return prf(version, prf_hash, master, label, handshake_hash(version, prf_hash, transcript), 12)


# -- TLS 1.3 (RFC 8446 §7) -----------------------------------------------------------------


def hkdf_expand_label(
    hash_name: str, secret: bytes, label: bytes, context: bytes, length: int
) -> bytes:
    full_label = b"tls13 " + label
    info = (
        length.to_bytes(2, "big")
        + bytes([len(full_label)])
        + full_label
        + bytes([len(context)])
        + context
    )
    return HKDFExpand(hash_algorithm(hash_name), length, info).derive(secret)


def traffic_key_iv(
    hash_name: str, secret: bytes, key_len: int, iv_len: int = 12
) -> tuple[bytes, bytes]:
    return (
        hkdf_expand_label(hash_name, secret, b"key", b"", key_len),
        hkdf_expand_label(hash_name, secret, b"iv", b"", iv_len),
    )


def next_traffic_secret(hash_name: str, secret: bytes) -> bytes:
    """KeyUpdate: application_traffic_secret_N+1."""
    return hkdf_expand_label(
        hash_name, secret, b"traffic upd", b"", hash_algorithm(hash_name).digest_size
    )


def tls13_finished(hash_name: str, traffic_secret: bytes, transcript: Iterable[bytes]) -> bytes:
    size = hash_algorithm(hash_name).digest_size
    finished_key = hkdf_expand_label(hash_name, traffic_secret, b"finished", b"", size)
    return hmac_digest(hash_name, finished_key, digest(hash_name, b"".join(transcript)))
