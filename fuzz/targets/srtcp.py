"""media/srtp.py: SRTCP and SRTP protection and unprotection.

Input: an option byte (bits 0-3: the suite; bit 4: a 4-byte MKI; bit 5: UNENCRYPTED_SRTCP;
bit 6: the rest is a packet to unprotect as it is, not a plaintext), two bytes that say which
byte of the protected packet to change, then the packet (an RTCP compound, or RTP when it
does not look like RTCP).

Oracle: only ``SrtpError`` escapes; a plaintext protected and unprotected comes back
unchanged; the same packet again is a replay; any single changed byte of a protected packet
is refused (nothing that fails authentication comes back); raw bytes under a fixed key are
refused (a forgery does not authenticate), and whatever is refused leaves no SSRC state.
"""

from __future__ import annotations

import struct

from captagent_tls.media.srtp import MAX_ROC_GUESSES, SUITES, MasterKey, SrtpContext, SrtpError
from fuzz.oracle import OracleFailure

MAX_LEN = 2048
NAMES = sorted(SUITES)


def _context(option: int) -> SrtpContext:
    suite = SUITES[NAMES[(option & 0x0F) % len(NAMES)]]
    mki = bool(option & 0x10)
    keys = [
        MasterKey(
            bytes((7 * i + n) & 0xFF for i in range(suite.key_length)),
            bytes((11 * i + n) & 0xFF for i in range(suite.salt_length)),
            n if mki else None,
        )
        for n in ((1, 2) if mki else (1,))
    ]
    return SrtpContext(
        suite, keys, mki_length=4 if mki else 0, unencrypted_srtcp=bool(option & 0x20)
    )


def one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    option, where, packet = data[0], struct.unpack_from("!H", data, 1)[0], data[3:]
    is_rtcp = len(packet) >= 8 and 192 <= packet[1] <= 223
    receiver = _context(option)
    if option & 0x40:
        try:
            (receiver.unprotect_rtcp if is_rtcp else receiver.unprotect_rtp)(packet)
        except SrtpError:
            if receiver.ssrcs:
                raise OracleFailure("srtp-state", "a refused packet left SSRC state") from None
            return
        raise OracleFailure("srtp-forgery", "bytes under a key nobody used authenticated")
    sender = _context(option)
    mki = 2 if option & 0x10 else None
    try:
        if is_rtcp:
            wire = sender.protect_rtcp(packet, where & 0x7FFFFFFF, mki=mki)
        else:
            wire = sender.protect_rtp(packet, (where >> 8) % MAX_ROC_GUESSES, mki=mki)
    except SrtpError:
        return  # not an RTCP or RTP header: nothing to protect
    unprotect = receiver.unprotect_rtcp if is_rtcp else receiver.unprotect_rtp
    if unprotect(wire) != packet:
        raise OracleFailure("srtp-round-trip", "unprotect(protect(x)) is not x")
    try:
        unprotect(wire)
    except SrtpError as error:
        if error.reason != SrtpError.REPLAY:
            raise OracleFailure("srtp-replay", f"a repeated packet is {error.reason}") from None
    else:
        raise OracleFailure("srtp-replay", "a repeated packet came back")
    changed = bytearray(wire)
    at = where % len(changed)
    changed[at] ^= 1 + (where >> 8) % 255
    fresh = _context(option)
    try:
        (fresh.unprotect_rtcp if is_rtcp else fresh.unprotect_rtp)(bytes(changed))
    except SrtpError:
        if fresh.ssrcs:
            raise OracleFailure("srtp-state", "a refused packet left SSRC state") from None
        return
    raise OracleFailure("srtp-changed-byte", f"byte {at} changed and still accepted")


def seeds() -> list[bytes]:
    rtcp = struct.pack("!BBHI", 0x81, 201, 7, 0xDEADBEEF) + struct.pack("!6I", 2, 7, 1000, 3, 4, 5)
    rtp = struct.pack("!BBHII", 0x80, 0, 1000, 160000, 0xCAFEBABE) + b"\xd5" * 40
    out = []
    for option in (0, 1, 2, 6, 8, 9, 0x10, 0x21, 0x38):
        out.append(bytes([option]) + struct.pack("!H", 37) + rtcp)
        out.append(bytes([option]) + struct.pack("!H", 0x0105) + rtp)
    out.append(b"\x40\x00\x00" + rtcp + bytes(14))
    return out
