"""SRTP and SRTCP (RFC 3711), with the AES-192/256 counter-mode suites of RFC 6188 and the
AES-GCM suites of RFC 7714.  pyca/cryptography does AES (counter mode, GCM) and HMAC-SHA1;
what is written here is what the RFCs define on top: the key derivation (AES-CM PRF, labels,
key derivation rate), the IVs, what is authenticated, where the index, MKI and tag sit, the
rollover counter and the replay windows.

Every packet is authenticated before anything of it is decrypted or handed back, with a
constant-time compare (``hmac.compare_digest``) or the AEAD's own tag check; a packet that
fails raises ``SrtpError`` with a reason to count, and leaves no state behind: per-SSRC state
(replay windows, rollover counters) is created and advanced only by packets that
authenticate, so forged packets cannot fill tables or move windows.

One ``SrtpContext`` holds the keys of one sender (one ``a=crypto`` line, or one half of a
DTLS-SRTP export): what that sender protects with them, RTP and RTCP, every SSRC.
"""

from __future__ import annotations

import hmac as _hmac
from collections.abc import Sequence
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from captagent_tls.media.rtp import parse_rtp_header
from captagent_tls.media.sdp import Crypto

AUTH_KEY_LENGTH = 20  # HMAC-SHA1 session authentication key, 160 bits (RFC 3711 §8.2)
GCM_TAG_LENGTH = 16  # RFC 7714 §7: the AEAD_AES_*_GCM suites use a 16-byte tag
DEFAULT_WINDOW = 128  # replay window, packets (RFC 3711 §3.3.2 asks for at least 64)
MAX_SSRCS = 64  # SSRCs one context keeps state for (only those that authenticated)
MAX_ROC_GUESSES = 16  # rollover counters tried for a stream first seen mid-call
MAX_MASTER_KEYS = 16  # keys one context holds (told apart by MKI)
MAX_DERIVED = 4  # session key sets cached per master key when a KDR re-derives them

# labels of RFC 3711 §4.3.1
LABEL_RTP_ENCRYPTION, LABEL_RTP_AUTH, LABEL_RTP_SALT = 0, 1, 2
LABEL_RTCP_ENCRYPTION, LABEL_RTCP_AUTH, LABEL_RTCP_SALT = 3, 4, 5


class SrtpSuite(NamedTuple):
    name: str  # the SDES name (RFC 4568 §6.2, RFC 6188 §6, RFC 7714 §14.1)
    cipher: str  # "aes-cm", "aes-gcm" or "null"
    key_length: int  # master (and session) encryption key, bytes
    salt_length: int  # master (and session) salt, bytes
    srtp_tag: int  # authentication tag of SRTP, bytes
    srtcp_tag: int  # of SRTCP: 10 for every HMAC-SHA1 suite, _32 ones too (RFC 4568 §6.2)
    profile_id: int | None  # DTLS-SRTP protection profile (RFC 5764 §4.1.2, RFC 7714 §14.2)
    profile_name: str | None

    @property
    def aead(self) -> bool:
        return self.cipher == "aes-gcm"

    @property
    def master_length(self) -> int:
        return self.key_length + self.salt_length


SUITES: dict[str, SrtpSuite] = {
    s.name: s
    for s in (
        SrtpSuite(
            "AES_CM_128_HMAC_SHA1_80", "aes-cm", 16, 14, 10, 10, 0x0001, "SRTP_AES128_CM_SHA1_80"
        ),
        SrtpSuite(
            "AES_CM_128_HMAC_SHA1_32", "aes-cm", 16, 14, 4, 10, 0x0002, "SRTP_AES128_CM_SHA1_32"
        ),
        SrtpSuite("AES_192_CM_HMAC_SHA1_80", "aes-cm", 24, 14, 10, 10, None, None),
        SrtpSuite("AES_192_CM_HMAC_SHA1_32", "aes-cm", 24, 14, 4, 10, None, None),
        SrtpSuite("AES_256_CM_HMAC_SHA1_80", "aes-cm", 32, 14, 10, 10, None, None),
        SrtpSuite("AES_256_CM_HMAC_SHA1_32", "aes-cm", 32, 14, 4, 10, None, None),
        SrtpSuite("NULL_HMAC_SHA1_80", "null", 16, 14, 10, 10, 0x0005, "SRTP_NULL_HMAC_SHA1_80"),
        SrtpSuite("NULL_HMAC_SHA1_32", "null", 16, 14, 4, 10, 0x0006, "SRTP_NULL_HMAC_SHA1_32"),
        SrtpSuite("AEAD_AES_128_GCM", "aes-gcm", 16, 12, 16, 16, 0x0007, "SRTP_AEAD_AES_128_GCM"),
        SrtpSuite("AEAD_AES_256_GCM", "aes-gcm", 32, 12, 16, 16, 0x0008, "SRTP_AEAD_AES_256_GCM"),
    )
}
# RFC 6188 §6 also allows the names with the key size first for AES-128 (not in use)
PROFILES: dict[int, SrtpSuite] = {s.profile_id: s for s in SUITES.values() if s.profile_id}


class SrtpError(Exception):
    """A packet that is not handed back, and why (``reason`` is a counter label)."""

    MALFORMED = "malformed"
    AUTH = "auth_failed"
    REPLAY = "replay"
    UNKNOWN_MKI = "unknown_mki"
    UNSUPPORTED = "unsupported"

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class MasterKey(NamedTuple):
    key: bytes
    salt: bytes
    mki: int | None = None  # the MKI value that selects this key, with a context's MKI length


# -- key derivation (RFC 3711 §4.3) ---------------------------------------------------------


def _aes_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def derive_session_key(
    master_key: bytes, master_salt: bytes, label: int, length: int, r: int = 0
) -> bytes:
    """The AES-CM PRF of RFC 3711 §4.3.1/§4.3.3 (RFC 6188 §3 for 192/256-bit keys):
    x = (label || r) XOR master_salt, the keystream of AES-CTR(master_key, x * 2^16).

    ``r`` is index DIV key_derivation_rate (0 when keys are derived once).  A 96-bit GCM
    master salt is the high end of the 112 bits (padded with zeros, RFC 7714 §11)."""
    salt = int.from_bytes(master_salt.ljust(14, b"\x00")[:14], "big")
    x = salt ^ ((label << 48) | (r & 0xFFFFFFFFFFFF))
    return _aes_ctr(master_key, (x << 16).to_bytes(16, "big"), bytes(length))


class _SessionKeys:
    """The session keys of one master key for one of SRTP or SRTCP."""

    __slots__ = ("encryption", "salt", "salt_int", "mac", "gcm")

    def __init__(self, suite: SrtpSuite, master: MasterKey, rtcp: bool, r: int) -> None:
        base = 3 if rtcp else 0
        self.encryption = derive_session_key(
            master.key, master.salt, base + LABEL_RTP_ENCRYPTION, suite.key_length, r
        )
        self.salt = derive_session_key(
            master.key, master.salt, base + LABEL_RTP_SALT, suite.salt_length, r
        )
        self.salt_int = int.from_bytes(self.salt, "big")
        self.mac: crypto_hmac.HMAC | None = None
        self.gcm: AESGCM | None = None
        if suite.aead:
            self.gcm = AESGCM(self.encryption)
        else:
            auth = derive_session_key(
                master.key, master.salt, base + LABEL_RTP_AUTH, AUTH_KEY_LENGTH, r
            )
            self.mac = crypto_hmac.HMAC(auth, hashes.SHA1())

    def tag(self, *parts: bytes) -> bytes:
        assert self.mac is not None
        mac = self.mac.copy()
        for part in parts:
            mac.update(part)
        return mac.finalize()

    def cm_iv(self, ssrc: int, index: int) -> bytes:
        """RFC 3711 §4.1.1: (k_s * 2^16) XOR (SSRC * 2^64) XOR (i * 2^16)."""
        return ((self.salt_int << 16) ^ (ssrc << 64) ^ (index << 16)).to_bytes(16, "big")

    def gcm_iv(self, ssrc: int, index: int) -> bytes:
        """RFC 7714 §8.1 (SRTP: ROC || SEQ is the 48-bit index) and §9.1 (SRTCP: 0 || the
        31-bit index): 00 00 || SSRC || index (48 bits), XOR the 96-bit salt."""
        return (self.salt_int ^ (ssrc << 48) ^ index).to_bytes(12, "big")


class _MasterState:
    """One master key and its session keys (derived once, or per ``r`` with a KDR)."""

    __slots__ = ("master", "suite", "kdr", "_rtp", "_rtcp")

    def __init__(self, suite: SrtpSuite, master: MasterKey, kdr: int | None) -> None:
        self.master = master
        self.suite = suite
        self.kdr = kdr
        self._rtp: dict[int, _SessionKeys] = {}
        self._rtcp: dict[int, _SessionKeys] = {}

    def keys(self, rtcp: bool, index: int) -> _SessionKeys:
        r = 0 if self.kdr is None else index >> self.kdr
        cache = self._rtcp if rtcp else self._rtp
        keys = cache.get(r)
        if keys is None:
            if len(cache) >= MAX_DERIVED:
                del cache[next(iter(cache))]
            keys = cache[r] = _SessionKeys(self.suite, self.master, rtcp, r)
        return keys


class ReplayWindow:
    """A sliding window of the indexes already accepted (RFC 3711 §3.3.2)."""

    __slots__ = ("top", "mask", "size")

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        self.top = -1
        self.mask = 0
        self.size = size

    def check(self, index: int) -> bool:
        """True when ``index`` may be new: ahead of the window, or inside it and unseen."""
        if index > self.top:
            return True
        delta = self.top - index
        return delta < self.size and not (self.mask >> delta) & 1

    def accept(self, index: int) -> None:
        if index > self.top:
            shift = index - self.top
            self.mask = (
                ((self.mask << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            )
            self.top = index
        else:
            self.mask |= 1 << (self.top - index)


class _SsrcState:
    __slots__ = ("rtcp_window", "rtp_window", "roc", "s_l")

    def __init__(self, window: int) -> None:
        self.rtcp_window = ReplayWindow(window)
        self.rtp_window = ReplayWindow(window)
        self.roc = -1  # unknown until an SRTP packet authenticates
        self.s_l = 0


def estimate_roc(roc: int, s_l: int, seq: int) -> int:
    """RFC 3711 §3.3.1 and appendix A: the ROC of a packet with ``seq``, given the highest
    sequence number ``s_l`` seen with the current ``roc``."""
    if s_l < 32768:
        return roc - 1 if seq - s_l > 32768 else roc
    return roc + 1 if s_l - 32768 > seq else roc


class SrtpContext:
    """The keys of one sender, with replay and rollover state per SSRC."""

    def __init__(
        self,
        suite: SrtpSuite,
        keys: MasterKey | Sequence[MasterKey],
        *,
        mki_length: int = 0,
        kdr: int | None = None,
        unencrypted_srtp: bool = False,
        unencrypted_srtcp: bool = False,
        unauthenticated_srtp: bool = False,
        window: int = DEFAULT_WINDOW,
        max_ssrcs: int = MAX_SSRCS,
        roc_guesses: int = MAX_ROC_GUESSES,
    ) -> None:
        masters = [keys] if isinstance(keys, MasterKey) else list(keys)
        if not masters or len(masters) > MAX_MASTER_KEYS:
            raise SrtpError(SrtpError.UNSUPPORTED, f"{len(masters)} master keys")
        for master in masters:
            if len(master.key) != suite.key_length or len(master.salt) != suite.salt_length:
                raise SrtpError(
                    SrtpError.UNSUPPORTED,
                    f"{suite.name} takes a {suite.key_length}-byte key and "
                    f"{suite.salt_length}-byte salt",
                )
            if mki_length and (master.mki is None or master.mki >> (8 * mki_length)):
                raise SrtpError(SrtpError.UNSUPPORTED, "a key without an MKI of its length")
        if not mki_length and len(masters) > 1:
            raise SrtpError(SrtpError.UNSUPPORTED, "several keys need an MKI to choose")
        self.suite = suite
        self.mki_length = mki_length
        self.unencrypted_srtp = unencrypted_srtp or suite.cipher == "null"
        self.unencrypted_srtcp = unencrypted_srtcp or suite.cipher == "null"
        self.unauthenticated_srtp = unauthenticated_srtp and not suite.aead
        self.window = window
        self.max_ssrcs = max_ssrcs
        self.roc_guesses = roc_guesses
        self._masters = {
            (m.mki if mki_length else None): _MasterState(suite, m, kdr) for m in masters
        }
        self._states: dict[int, _SsrcState] = {}
        self.ssrc_evictions = 0
        # what tells two contexts apart when an offer is repeated: same keys, same context
        self.identity = (
            suite.name,
            tuple(masters),
            mki_length,
            kdr,
            self.unencrypted_srtp,
            self.unencrypted_srtcp,
            self.unauthenticated_srtp,
        )

    @classmethod
    def from_sdes(cls, crypto: Crypto, **options: int) -> SrtpContext:
        """The context of one ``a=crypto`` line; ``SrtpError(UNSUPPORTED)`` for a suite or
        key this cannot use."""
        suite = SUITES.get(crypto.suite)
        if suite is None:
            raise SrtpError(SrtpError.UNSUPPORTED, f"suite {crypto.suite}")
        masters = []
        for key in crypto.keys:
            if len(key.key_salt) != suite.master_length:
                raise SrtpError(
                    SrtpError.UNSUPPORTED,
                    f"{suite.name} key of {len(key.key_salt)} bytes, not {suite.master_length}",
                )
            masters.append(
                MasterKey(
                    key.key_salt[: suite.key_length], key.key_salt[suite.key_length :], key.mki
                )
            )
        return cls(
            suite,
            masters,
            mki_length=crypto.mki_length,
            kdr=crypto.kdr,
            unencrypted_srtp=crypto.unencrypted_srtp,
            unencrypted_srtcp=crypto.unencrypted_srtcp,
            unauthenticated_srtp=crypto.unauthenticated_srtp,
            **options,
        )

    # -- common --------------------------------------------------------------------------

    def _master(self, mki: bytes) -> _MasterState:
        if not self.mki_length:
            return self._masters[None]
        master = self._masters.get(int.from_bytes(mki, "big"))
        if master is None:
            raise SrtpError(SrtpError.UNKNOWN_MKI, mki.hex())
        return master

    def _keep(self, ssrc: int) -> _SsrcState:
        """The state of an SSRC whose packet authenticated: made now if new (bounded)."""
        state = self._states.get(ssrc)
        if state is None:
            if len(self._states) >= self.max_ssrcs:
                del self._states[next(iter(self._states))]
                self.ssrc_evictions += 1
            state = self._states[ssrc] = _SsrcState(self.window)
        return state

    @property
    def ssrcs(self) -> int:
        return len(self._states)

    # -- SRTCP ---------------------------------------------------------------------------

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """The RTCP compound inside an SRTCP packet, authenticated (RFC 3711 §3.4, RFC 7714
        §9); raises ``SrtpError``."""
        suite = self.suite
        mki_length = self.mki_length
        tag_length = suite.srtcp_tag
        n = len(packet)
        if n < 8 + tag_length + 4 + mki_length or packet[0] >> 6 != 2:
            raise SrtpError(SrtpError.MALFORMED, f"{n} bytes cannot be SRTCP")
        if suite.aead:
            index_at = n - mki_length - 4
            mki = packet[n - mki_length :] if mki_length else b""
        else:
            index_at = n - tag_length - mki_length - 4
            mki = packet[index_at + 4 : n - tag_length]
        e_index = int.from_bytes(packet[index_at : index_at + 4], "big")
        encrypted = bool(e_index >> 31)
        index = e_index & 0x7FFFFFFF
        ssrc = int.from_bytes(packet[4:8], "big")
        master = self._master(mki)
        keys = master.keys(True, index)
        if suite.aead:
            assert keys.gcm is not None
            iv = keys.gcm_iv(ssrc, index)
            trailer = packet[index_at : index_at + 4]
            try:
                if encrypted:
                    body = keys.gcm.decrypt(iv, packet[8:index_at], packet[:8] + trailer)
                else:
                    tag_at = index_at - GCM_TAG_LENGTH
                    keys.gcm.decrypt(iv, packet[tag_at:index_at], packet[:tag_at] + trailer)
                    body = packet[8:tag_at]
            except InvalidTag:
                raise SrtpError(SrtpError.AUTH, f"SRTCP of SSRC {ssrc:08x}") from None
        else:
            expected = keys.tag(packet[: index_at + 4])[:tag_length]
            if not _hmac.compare_digest(expected, packet[n - tag_length :]):
                raise SrtpError(SrtpError.AUTH, f"SRTCP of SSRC {ssrc:08x}")
            body = packet[8:index_at]
        # a replay is a packet that authenticates but was accepted before: checked after the
        # tag, so a forgery is counted as one whatever index it carries
        state = self._states.get(ssrc)
        if state is not None and not state.rtcp_window.check(index):
            raise SrtpError(SrtpError.REPLAY, f"SRTCP index {index} of SSRC {ssrc:08x}")
        if not suite.aead and encrypted and suite.cipher != "null":
            body = _aes_ctr(keys.encryption, keys.cm_iv(ssrc, index), body)
        self._keep(ssrc).rtcp_window.accept(index)
        return packet[:8] + body

    def protect_rtcp(self, packet: bytes, index: int, *, mki: int | None = None) -> bytes:
        """SRTCP of an RTCP compound with SRTCP index ``index``: the inverse of
        ``unprotect_rtcp``, for tests and fuzzing (the agent never protects)."""
        if len(packet) < 8 or packet[0] >> 6 != 2:
            raise SrtpError(SrtpError.MALFORMED, "not an RTCP header")
        suite = self.suite
        master = self._masters[mki if self.mki_length else None]
        mki_bytes = (
            mki.to_bytes(self.mki_length, "big") if self.mki_length and mki is not None else b""
        )
        encrypt = not self.unencrypted_srtcp
        trailer = ((0x80000000 if encrypt else 0) | index).to_bytes(4, "big")
        ssrc = int.from_bytes(packet[4:8], "big")
        keys = master.keys(True, index)
        if suite.aead:
            assert keys.gcm is not None
            iv = keys.gcm_iv(ssrc, index)
            if encrypt:
                sealed = keys.gcm.encrypt(iv, packet[8:], packet[:8] + trailer)
                return packet[:8] + sealed + trailer + mki_bytes
            tag = keys.gcm.encrypt(iv, b"", packet + trailer)
            return packet + tag + trailer + mki_bytes
        body = packet[8:]
        if encrypt and suite.cipher != "null":
            body = _aes_ctr(keys.encryption, keys.cm_iv(ssrc, index), body)
        authenticated = packet[:8] + body + trailer
        return authenticated + mki_bytes + keys.tag(authenticated)[: suite.srtcp_tag]

    # -- SRTP ----------------------------------------------------------------------------

    def unprotect_rtp(self, packet: bytes) -> bytes:
        """The RTP packet inside an SRTP packet, authenticated (unless the line said
        UNAUTHENTICATED_SRTP), with the rollover counter estimated per RFC 3711 §3.3.1; a
        stream first seen mid-call has its ROC found by trying the first ``roc_guesses``
        values, authentication deciding.  Raises ``SrtpError``."""
        header = parse_rtp_header(packet)
        if header is None:
            raise SrtpError(SrtpError.MALFORMED, "not an RTP header")
        suite = self.suite
        mki_length = self.mki_length
        tag_length = 0 if self.unauthenticated_srtp else suite.srtp_tag
        n = len(packet)
        start = header.header_length
        if n < start + mki_length + tag_length:
            raise SrtpError(SrtpError.MALFORMED, f"{n} bytes cannot be SRTP")
        if suite.aead:
            mki = packet[n - mki_length :] if mki_length else b""
            end = n - mki_length
        else:
            end = n - tag_length - mki_length
            mki = packet[end : end + mki_length]
        master = self._master(mki)
        seq, ssrc = header.seq, header.ssrc
        state = self._states.get(ssrc)
        if state is not None and state.roc >= 0:
            candidates: Sequence[int] = (estimate_roc(state.roc, state.s_l, seq),)
        elif tag_length or suite.aead:
            candidates = range(self.roc_guesses)
        else:
            candidates = (0,)  # unauthenticated: nothing can tell the ROC, assume 0
        for roc in candidates:
            if roc < 0:
                continue
            index = (roc << 16) | seq
            plain = self._open_rtp(packet, start, end, n, master, ssrc, index, roc, tag_length)
            if plain is None:
                continue
            if state is not None and state.roc >= 0 and not state.rtp_window.check(index):
                raise SrtpError(SrtpError.REPLAY, f"SRTP index {index} of SSRC {ssrc:08x}")
            state = self._keep(ssrc)
            if state.roc < 0 or roc > state.roc:
                state.roc, state.s_l = roc, seq
            elif roc == state.roc and seq > state.s_l:
                state.s_l = seq
            state.rtp_window.accept(index)
            return plain
        raise SrtpError(SrtpError.AUTH, f"SRTP of SSRC {ssrc:08x}")

    def _open_rtp(
        self,
        packet: bytes,
        start: int,
        end: int,
        n: int,
        master: _MasterState,
        ssrc: int,
        index: int,
        roc: int,
        tag_length: int,
    ) -> bytes | None:
        keys = master.keys(False, index)
        if keys.gcm is not None:
            try:
                body = keys.gcm.decrypt(keys.gcm_iv(ssrc, index), packet[start:end], packet[:start])
            except InvalidTag:
                return None
            return packet[:start] + body
        if tag_length:
            expected = keys.tag(packet[:end], roc.to_bytes(4, "big"))[:tag_length]
            if not _hmac.compare_digest(expected, packet[n - tag_length :]):
                return None
        body = packet[start:end]
        if not self.unencrypted_srtp:
            body = _aes_ctr(keys.encryption, keys.cm_iv(ssrc, index), body)
        return packet[:start] + body

    def protect_rtp(self, packet: bytes, roc: int = 0, *, mki: int | None = None) -> bytes:
        """SRTP of an RTP packet with rollover counter ``roc``: for tests and fuzzing."""
        header = parse_rtp_header(packet)
        if header is None:
            raise SrtpError(SrtpError.MALFORMED, "not an RTP header")
        master = self._masters[mki if self.mki_length else None]
        mki_bytes = (
            mki.to_bytes(self.mki_length, "big") if self.mki_length and mki is not None else b""
        )
        start = header.header_length
        index = (roc << 16) | header.seq
        keys = master.keys(False, index)
        if keys.gcm is not None:
            sealed = keys.gcm.encrypt(
                keys.gcm_iv(header.ssrc, index), packet[start:], packet[:start]
            )
            return packet[:start] + sealed + mki_bytes
        body = packet[start:]
        if not self.unencrypted_srtp:
            body = _aes_ctr(keys.encryption, keys.cm_iv(header.ssrc, index), body)
        out = packet[:start] + body
        if self.unauthenticated_srtp:
            return out + mki_bytes
        return out + mki_bytes + keys.tag(out, roc.to_bytes(4, "big"))[: self.suite.srtp_tag]


def srtcp_sender_ssrc(packet: bytes) -> int | None:
    """The SSRC of an SRTCP (or RTCP) packet's first header, which SRTCP leaves clear."""
    if len(packet) < 8:
        return None
    return int.from_bytes(packet[4:8], "big")
