"""media/sdp.py: ``parse_sdp`` and ``sdp_of_sip``.

Input: one byte (bit 0: the rest is a SIP message whose SDP body is looked for first), then
the bytes.

Oracle: no exception at all (the parser never raises); what is returned is bounded and comes
from the input: at most MAX_MEDIA media, ports within 0-65535, each media's kind, protocol and
connection address are text of the input, every ``a=crypto`` line has keys of one MKI length
whose key bytes are the base64 of text in the input; a SIP message's SDP body is a piece of
the message.
"""

from __future__ import annotations

import base64

from captagent_tls.media import sdp as sdp_mod
from fuzz.oracle import OracleFailure

MAX_LEN = 8192
KEY = base64.b64encode(bytes(range(30))).decode()
DICTIONARY = [
    b"\r\nm=audio ",
    b" RTP/SAVP ",
    b" UDP/TLS/RTP/SAVPF ",
    b"\r\nc=IN IP4 ",
    b"\r\nc=IN IP6 ",
    b"\r\na=rtcp:",
    b"\r\na=rtcp-mux",
    b"\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:",
    b"|2^20|1:4",
    b" UNENCRYPTED_SRTCP",
    b" KDR=",
    b"\r\na=rtpmap:96 opus/48000/2",
    b"\r\na=setup:actpass",
    b"\r\na=fingerprint:sha-256 ",
    b"Content-Type: application/sdp\r\n",
    b"Content-Type: multipart/mixed;boundary=",
]


def _check(text: str, parsed: sdp_mod.SessionDescription) -> None:
    if len(parsed.media) > sdp_mod.MAX_MEDIA:
        raise OracleFailure("sdp-media-bound", f"{len(parsed.media)} media")
    for media in parsed.media:
        for port in (media.port, media.rtcp_port):
            if not 0 <= port <= 0xFFFF:
                raise OracleFailure("sdp-port", str(port))
        for piece in (media.kind, media.proto, media.address or "", media.rtcp_address or ""):
            if piece not in text:
                raise OracleFailure("sdp-invented", repr(piece[:60]))
        if len(media.crypto) > sdp_mod.MAX_CRYPTO_PER_MEDIA:
            raise OracleFailure("sdp-crypto-bound", f"{len(media.crypto)} lines")
        for crypto in media.crypto:
            if not crypto.keys or len({k.mki_length for k in crypto.keys}) != 1:
                raise OracleFailure("sdp-crypto-keys", repr(crypto))
            for key in crypto.keys:
                # base64 may carry bits past the last byte that decoding drops: all but the
                # last character of the canonical encoding must be in the input
                encoded = base64.b64encode(key.key_salt).decode().rstrip("=")[:-1]
                if encoded not in text:
                    raise OracleFailure("sdp-key-invented", encoded[:40])
                if key.mki is not None and key.mki >> (8 * key.mki_length):
                    raise OracleFailure("sdp-mki", f"{key.mki} in {key.mki_length} bytes")
            _ = crypto.kdr, crypto.unencrypted_srtcp


def one_input(data: bytes) -> None:
    if not data:
        return
    option, body = data[0], data[1:]
    if option & 1:
        found = sdp_mod.sdp_of_sip(body)
        if found is None:
            return
        if found not in body:
            raise OracleFailure("sdp-body-invented", "the SDP body is not in the message")
        body = found
    parsed = sdp_mod.parse_sdp(body)
    _check(body[: sdp_mod.MAX_SDP_BYTES].decode("utf-8", "replace"), parsed)


def seeds() -> list[bytes]:
    offer = (
        "v=0\r\no=alice 1 1 IN IP4 198.51.100.1\r\ns=-\r\nc=IN IP4 198.51.100.1\r\nt=0 0\r\n"
        "a=setup:actpass\r\na=fingerprint:sha-256 AB:CD\r\n"
        "m=audio 49170 RTP/SAVP 0 96\r\na=rtpmap:96 opus/48000/2\r\n"
        "a=rtcp:53020 IN IP4 10.0.0.1\r\n"
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^20|1:4;inline:{KEY}|2^20|2:4\r\n"
        f"a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{KEY} UNENCRYPTED_SRTCP KDR=2\r\n"
        "m=video 51372/2 UDP/TLS/RTP/SAVPF 97\r\nc=IN IP6 2001:db8::7\r\na=rtcp-mux\r\n"
        "a=recvonly\r\nm=audio 0 RTP/AVP 0\r\n"
    ).encode()
    sip = (
        b"INVITE sip:bob@example.com SIP/2.0\r\nCall-ID: x\r\n"
        b"Content-Type: application/sdp\r\nContent-Length: "
        + str(len(offer)).encode()
        + b"\r\n\r\n"
    ) + offer
    multipart = (
        b"SIP/2.0 200 OK\r\nCall-ID: y\r\nContent-Type: multipart/mixed;boundary=b1\r\n\r\n"
        b"--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b"--b1\r\nContent-Type: application/sdp\r\n\r\n" + offer + b"\r\n--b1--\r\n"
    )
    return [b"\x00" + offer, b"\x01" + sip, b"\x01" + multipart]
