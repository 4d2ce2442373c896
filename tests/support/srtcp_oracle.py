"""An independent SRTP/SRTCP implementation, for checking test captures only.

TEST SUPPORT CODE: written from the RFCs with pyca/cryptography so that the media fixtures
(protected by libsrtp2, GStreamer, baresip) are checked by a second implementation that shares
no code with them, and none with the agent.  It is not the agent's decoder and must not be
imported by ``src/``.

It also *protects*, for the one thing Debian's libsrtp2 gets wrong: AES-192-CM.  libsrtp
before 2.8 / 3.0 derives AES-192 session keys with an AES-256 PRF fed with the 38-byte key||salt
padded with zeros (cisco/libsrtp issue #763, fixed by pull request #765 in 2025), so its
AES_192_CM packets are not RFC 6188's.  ``make_media_captures.py`` protects the AES-192
scenarios here instead; :func:`self_test` checks the key derivation against RFC 3711 B.3
and the RFC 6188 7.4 master key through the SRTP packet of fixed libsrtp's
``srtp_validate_aes_192`` (test/srtp_driver.c), and the 128/256-bit and GCM paths are checked
against libsrtp2 packet by packet by the generator.

* RFC 3711 4.3.1: key derivation (AES-CM PRF, key derivation rate 0), labels 0-2 for SRTP and
  3-5 for SRTCP; RFC 6188 for the AES-192/256 PRF (the PRF's AES key is the master key).
* RFC 3711 4.1.1: AES counter mode; 4.2.1 and 3.4: HMAC-SHA1 over the SRTCP header,
  payload and E||index (the MKI is not authenticated); the tag is truncated.
* RFC 7714: AEAD_AES_128_GCM / AEAD_AES_256_GCM, 12-byte salt, 16-byte tag, IV from SSRC and
  SRTCP index (RTP: SSRC, ROC, SEQ), AAD = the 8 header bytes || E||index (RTCP).

Suites are the SDES names (``AES_CM_128_HMAC_SHA1_80`` ...), see ``SUITE_PARAMS``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# name: (master key bytes, master salt bytes, AEAD, SRTP tag bytes, SRTCP tag bytes)
SUITE_PARAMS: dict[str, tuple[int, int, bool, int, int]] = {
    "AES_CM_128_HMAC_SHA1_80": (16, 14, False, 10, 10),
    "AES_CM_128_HMAC_SHA1_32": (16, 14, False, 4, 10),
    "AES_192_CM_HMAC_SHA1_80": (24, 14, False, 10, 10),
    "AES_192_CM_HMAC_SHA1_32": (24, 14, False, 4, 10),
    "AES_256_CM_HMAC_SHA1_80": (32, 14, False, 10, 10),
    "AES_256_CM_HMAC_SHA1_32": (32, 14, False, 4, 10),
    "AEAD_AES_128_GCM": (16, 12, True, 16, 16),
    "AEAD_AES_256_GCM": (32, 12, True, 16, 16),
}


class AuthError(ValueError):
    """The tag does not verify."""


def _aes_ctr(key: bytes, iv16: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CTR(iv16)).encryptor()
    return enc.update(data) + enc.finalize()


def kdf(master_key: bytes, master_salt: bytes, label: int, length: int) -> bytes:
    """RFC 3711 4.3.1 with kdr = 0: x = (label << 48) XOR salt (112 bits), IV = x * 2^16.

    A 96-bit (GCM) salt is used as the high bits of the 112-bit value (RFC 7714 11: the salt
    is padded with zeros on the right)."""
    salt = master_salt.ljust(14, b"\x00")
    x = int.from_bytes(salt, "big") ^ (label << 48)
    iv = (x << 16).to_bytes(16, "big")
    return _aes_ctr(master_key, iv, b"\x00" * length)


class SrtcpContext:
    """Session keys of one SRTP master key, for SRTCP (and SRTP) of one sender."""

    def __init__(
        self,
        suite: str,
        master: bytes,
        *,
        mki_len: int = 0,
        unencrypted_srtcp: bool = False,
    ) -> None:
        klen, slen, aead, rtp_tag, rtcp_tag = SUITE_PARAMS[suite]
        if len(master) != klen + slen:
            raise ValueError(f"{suite}: {len(master)} bytes of key||salt, want {klen + slen}")
        self.suite, self.aead, self.mki_len = suite, aead, mki_len
        self.rtp_tag, self.rtcp_tag = rtp_tag, rtcp_tag
        self.unencrypted_srtcp = unencrypted_srtcp
        mk, ms = master[:klen], master[klen:]
        self.rtp_key = kdf(mk, ms, 0, klen)
        self.rtp_auth = b"" if aead else kdf(mk, ms, 1, 20)
        self.rtp_salt = kdf(mk, ms, 2, slen)
        self.rtcp_key = kdf(mk, ms, 3, klen)
        self.rtcp_auth = b"" if aead else kdf(mk, ms, 4, 20)
        self.rtcp_salt = kdf(mk, ms, 5, slen)

    # -- SRTCP ---------------------------------------------------------------
    def split_rtcp(self, pkt: bytes) -> tuple[bytes, int, bytes, bytes, bool]:
        """(header+payload as on the wire, SRTCP index, MKI, tag, E flag)."""
        tag_len = 0 if self.aead else self.rtcp_tag
        trailer = 4 + self.mki_len + tag_len
        if len(pkt) < 8 + trailer:
            raise ValueError("SRTCP packet too short")
        body = pkt[: len(pkt) - trailer]
        (ei,) = struct.unpack_from("!I", pkt, len(body))
        mki = pkt[len(body) + 4 : len(body) + 4 + self.mki_len]
        tag = pkt[len(pkt) - tag_len :] if tag_len else b""
        return body, ei & 0x7FFFFFFF, mki, tag, bool(ei >> 31)

    def unprotect_rtcp(self, pkt: bytes) -> tuple[bytes, int, bool, bytes]:
        """(plaintext compound RTCP, SRTCP index, E flag, MKI); raises AuthError."""
        body, index, mki, tag, e = self.split_rtcp(pkt)
        ssrc = body[4:8]
        ei = struct.pack("!I", (e << 31) | index)
        if self.aead:
            iv = bytearray(12)
            iv[2:6] = ssrc
            iv[8:12] = struct.pack("!I", index)
            iv = bytes(a ^ b for a, b in zip(iv, self.rtcp_salt, strict=True))
            gcm = AESGCM(self.rtcp_key)
            if e:
                try:
                    plain = gcm.decrypt(iv, body[8:], body[:8] + ei)
                except Exception as exc:
                    raise AuthError("GCM tag") from exc
                return body[:8] + plain, index, e, mki
            # E = 0: everything is AAD, the 16-byte tag is the whole "ciphertext".
            try:
                gcm.decrypt(iv, body[-16:], body[:-16] + ei)
            except Exception as exc:
                raise AuthError("GCM tag") from exc
            return body[:-16], index, e, mki
        want = hmac.new(self.rtcp_auth, body + ei, hashlib.sha1).digest()[: self.rtcp_tag]
        if not hmac.compare_digest(want, tag):
            raise AuthError("HMAC-SHA1 tag")
        if not e:
            return body, index, e, mki
        iv = int.from_bytes(self.rtcp_salt, "big") << 16
        iv ^= int.from_bytes(ssrc, "big") << 64
        iv ^= index << 16
        return body[:8] + _aes_ctr(self.rtcp_key, iv.to_bytes(16, "big"), body[8:]), index, e, mki

    def protect_rtcp(
        self, plain: bytes, index: int, *, encrypt: bool = True, mki: bytes = b""
    ) -> bytes:
        """SRTCP packet for a compound RTCP packet with SRTCP index ``index``."""
        if len(mki) != self.mki_len:
            raise ValueError("MKI length")
        if self.unencrypted_srtcp:
            encrypt = False
        ssrc = plain[4:8]
        ei = struct.pack("!I", (int(encrypt) << 31) | index)
        if self.aead:
            iv = bytearray(12)
            iv[2:6] = ssrc
            iv[8:12] = struct.pack("!I", index)
            iv = bytes(a ^ b for a, b in zip(iv, self.rtcp_salt, strict=True))
            gcm = AESGCM(self.rtcp_key)
            if encrypt:
                return plain[:8] + gcm.encrypt(iv, plain[8:], plain[:8] + ei) + ei + mki
            return plain + gcm.encrypt(iv, b"", plain + ei) + ei + mki
        body = plain
        if encrypt:
            ctr = int.from_bytes(self.rtcp_salt, "big") << 16
            ctr ^= int.from_bytes(ssrc, "big") << 64
            ctr ^= index << 16
            body = plain[:8] + _aes_ctr(self.rtcp_key, ctr.to_bytes(16, "big"), plain[8:])
        tag = hmac.new(self.rtcp_auth, body + ei, hashlib.sha1).digest()[: self.rtcp_tag]
        return body + ei + mki + tag

    def protect_rtp(self, plain: bytes, roc: int = 0, *, mki: bytes = b"") -> bytes:
        """SRTP packet (RTP header without extension handling beyond its length)."""
        if len(mki) != self.mki_len:
            raise ValueError("MKI length")
        cc = plain[0] & 0x0F
        hlen = 12 + 4 * cc
        if plain[0] & 0x10:
            (words,) = struct.unpack_from("!H", plain, hlen + 2)
            hlen += 4 + 4 * words
        seq = struct.unpack_from("!H", plain, 2)[0]
        ssrc = plain[8:12]
        index = (roc << 16) | seq
        if self.aead:
            iv = bytearray(12)
            iv[2:6] = ssrc
            iv[6:12] = index.to_bytes(6, "big")
            iv = bytes(a ^ b for a, b in zip(iv, self.rtp_salt, strict=True))
            sealed = AESGCM(self.rtp_key).encrypt(iv, plain[hlen:], plain[:hlen])
            return plain[:hlen] + sealed + mki
        ctr = int.from_bytes(self.rtp_salt, "big") << 16
        ctr ^= int.from_bytes(ssrc, "big") << 64
        ctr ^= index << 16
        body = plain[:hlen] + _aes_ctr(self.rtp_key, ctr.to_bytes(16, "big"), plain[hlen:])
        tag = hmac.new(self.rtp_auth, body + struct.pack("!I", roc), hashlib.sha1).digest()
        return body + mki + tag[: self.rtp_tag]

    # -- SRTP ----------------------------------------------------------------
    def unprotect_rtp(self, pkt: bytes, roc: int = 0) -> bytes:
        """Plain RTP (no header extension beyond what the header says); raises AuthError."""
        cc = pkt[0] & 0x0F
        hlen = 12 + 4 * cc
        if pkt[0] & 0x10:
            (words,) = struct.unpack_from("!H", pkt, hlen + 2)
            hlen += 4 + 4 * words
        seq = struct.unpack_from("!H", pkt, 2)[0]
        ssrc = pkt[8:12]
        index = (roc << 16) | seq
        tag_len = 0 if self.aead else self.rtp_tag
        end = len(pkt) - tag_len - self.mki_len
        body = pkt[:end]
        if self.aead:
            iv = bytearray(12)
            iv[2:6] = ssrc
            iv[6:12] = index.to_bytes(6, "big")
            iv = bytes(a ^ b for a, b in zip(iv, self.rtp_salt, strict=True))
            try:
                return body[:hlen] + AESGCM(self.rtp_key).decrypt(iv, body[hlen:], body[:hlen])
            except Exception as exc:
                raise AuthError("GCM tag") from exc
        tag = pkt[len(pkt) - tag_len :]
        want = hmac.new(self.rtp_auth, body + struct.pack("!I", roc), hashlib.sha1).digest()
        if not hmac.compare_digest(want[:tag_len], tag):
            raise AuthError("HMAC-SHA1 tag")
        iv = int.from_bytes(self.rtp_salt, "big") << 16
        iv ^= int.from_bytes(ssrc, "big") << 64
        iv ^= index << 16
        return body[:hlen] + _aes_ctr(self.rtp_key, iv.to_bytes(16, "big"), body[hlen:])


def self_test() -> None:
    """Known answers: RFC 3711 B.3 (AES-128 PRF) and RFC 6188 7.4's master key (AES-192)."""
    mk = bytes.fromhex("E1F97A0D3E018BE0D64FA32C06DE4139")
    ms = bytes.fromhex("0EC675AD498AFEEBB6960B3AABE6")
    assert kdf(mk, ms, 0, 16) == bytes.fromhex("C61E7A93744F39EE10734AFE3FF7A087")
    assert kdf(mk, ms, 2, 14) == bytes.fromhex("30CBBC08863D8C85D49DB34A9AE1")
    assert kdf(mk, ms, 1, 20)[:16] == bytes.fromhex("CEBE321F6FF7716B6FD4AB49AF256A15")
    master = bytes.fromhex(
        "73edc66c4fa15776fb57f9505c17136550ffda71f3e8e5f1c8522f3acd4ce86d5add78edbb11"
    )
    ctx = SrtcpContext("AES_192_CM_HMAC_SHA1_80", master)
    assert ctx.rtp_key[:16] == bytes.fromhex("31874736a8f1143870c26e4857d8a5b2")
    plain = bytes.fromhex("800f0000decafbad00000000" + "ab" * 16)
    want = bytes.fromhex(
        "800f0000decafbad00000000d98865552f2762c3ef37f837acfdb7122d6bc4dc84c76f74aea5"
    )
    assert ctx.protect_rtp(plain) == want, ctx.protect_rtp(plain).hex()
    assert ctx.unprotect_rtp(want) == plain
