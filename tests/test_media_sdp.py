"""media/sdp.py: SDP as the media stage reads it, and the SDP body of a SIP message."""

from __future__ import annotations

import base64
import random

from captagent_tls.media import sdp as sdp_mod
from captagent_tls.media.sdp import (
    KeyParam,
    parse_crypto,
    parse_key_param,
    parse_sdp,
    sdp_of_sip,
)

KEY30 = bytes(range(30))
KEY30_B64 = base64.b64encode(KEY30).decode()
KEY46_B64 = base64.b64encode(bytes(range(46))).decode()

OFFER = (
    "v=0\r\n"
    "o=alice 2890844526 2890844527 IN IP4 198.51.100.1\r\n"
    "s=-\r\n"
    "c=IN IP4 198.51.100.1\r\n"
    "t=0 0\r\n"
    "a=setup:actpass\r\n"
    "a=fingerprint:sha-256 ab:cd:EF\r\n"
    "a=sendonly\r\n"
    "m=audio 49170 RTP/SAVP 0 8 96 101\r\n"
    "a=rtpmap:96 opus/48000/2\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=rtcp:53020 IN IP4 198.51.100.9\r\n"
    f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30_B64}|2^20|1:4\r\n"
    f"a=crypto:2 AES_256_CM_HMAC_SHA1_32 inline:{KEY46_B64}|4:2;inline:{KEY46_B64}|2^31|5:2 "
    "UNENCRYPTED_SRTCP KDR=3\r\n"
    "m=video 51372/2 UDP/TLS/RTP/SAVPF 97\r\n"
    "c=IN IP6 2001:db8::7/127\r\n"
    "a=rtcp-mux\r\n"
    "a=setup:active\r\n"
    "a=recvonly\r\n"
    "m=audio 0 RTP/AVP 0\r\n"
)


def test_a_full_offer_is_read_field_by_field():
    sdp = parse_sdp(OFFER.encode())
    assert not sdp.truncated and sdp.malformed_lines == 0
    assert sdp.origin is not None and sdp.origin.address == "198.51.100.1"
    assert sdp.address == "198.51.100.1"
    audio, video, rejected = sdp.media
    assert (audio.kind, audio.port, audio.port_count, audio.proto) == (
        "audio",
        49170,
        1,
        "RTP/SAVP",
    )
    assert audio.formats == ("0", "8", "96", "101")
    assert audio.address == "198.51.100.1"
    assert (audio.rtcp_port, audio.rtcp_address, audio.rtcp_mux) == (53020, "198.51.100.9", False)
    assert audio.secure and not audio.dtls
    assert audio.clock_rate(96) == 48000 and audio.rtpmap[96].channels == 2
    assert audio.clock_rate(101) == 8000 and audio.clock_rate(0) == 8000
    assert audio.clock_rate(9) == 8000  # G.722's RTP clock, RFC 3551
    assert audio.clock_rate(120) is None
    # session-level setup, fingerprint and direction are inherited
    assert audio.setup == "actpass" and audio.fingerprints == (("sha-256", "AB:CD:EF"),)
    assert audio.direction == "sendonly"
    first, second = audio.crypto
    assert (first.tag, first.suite) == (1, "AES_CM_128_HMAC_SHA1_80")
    assert first.keys == (KeyParam(KEY30, 1 << 20, 1, 4),)
    assert first.mki_length == 4 and first.kdr is None and not first.unencrypted_srtcp
    assert second.tag == 2 and len(second.keys) == 2
    assert second.keys[0] == KeyParam(bytes(range(46)), None, 4, 2)
    assert second.keys[1] == KeyParam(bytes(range(46)), 1 << 31, 5, 2)
    assert second.unencrypted_srtcp and second.kdr == 3
    assert audio.crypto_by_tag(2) is second and audio.crypto_by_tag(3) is None
    # media-level c=, port count, rtcp-mux, and its own setup and direction
    assert (video.port, video.port_count, video.address) == (51372, 2, "2001:db8::7")
    assert video.rtcp_mux and video.rtcp_port == 51373 and video.rtcp_address == "2001:db8::7"
    assert video.dtls and video.secure and video.setup == "active"
    assert video.direction == "recvonly"
    assert rejected.port == 0 and not rejected.secure


def test_key_params_as_rfc_4568_writes_them():
    assert parse_key_param(f"inline:{KEY30_B64}") == KeyParam(KEY30, None, None, 0)
    assert parse_key_param(f"inline:{KEY30_B64}|1048576") == KeyParam(KEY30, 1048576, None, 0)
    assert parse_key_param(f"inline:{KEY30_B64}|7:1") == KeyParam(KEY30, None, 7, 1)
    # base64 without its padding (some peers): 16 bytes need "==" that is not sent
    assert parse_key_param(f"inline:{base64.b64encode(b'x' * 16).decode().rstrip('=')}") == (
        KeyParam(b"x" * 16, None, None, 0)
    )
    for bad in (
        f"uri:{KEY30_B64}",  # only inline keys
        "inline:not*base64",
        f"inline:{KEY30_B64}|1:2|2^20",  # the lifetime comes first
        f"inline:{KEY30_B64}|2^99",
        f"inline:{KEY30_B64}|256:1",  # MKI value does not fit one byte
        f"inline:{KEY30_B64}|1:0",
        f"inline:{KEY30_B64}|1:129",
        f"inline:{KEY30_B64}|1|2|3",
        "inline:",
    ):
        assert parse_key_param(bad) is None, bad


def test_crypto_lines_that_are_refused():
    assert parse_crypto(f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30_B64}") is not None
    assert parse_crypto("1 AES_CM_128_HMAC_SHA1_80") is None
    assert parse_crypto(f"x AES_CM_128_HMAC_SHA1_80 inline:{KEY30_B64}") is None
    assert parse_crypto(f"1234567890 AES_CM_128_HMAC_SHA1_80 inline:{KEY30_B64}") is None
    # keys of one line must share their MKI length
    assert parse_crypto(f"1 S inline:{KEY30_B64}|1:1;inline:{KEY30_B64}|2:2") is None
    crypto = parse_crypto(f"3 aes_cm_128_hmac_sha1_80 inline:{KEY30_B64} KDR=0 WSH=64")
    assert crypto is not None and crypto.suite == "AES_CM_128_HMAC_SHA1_80"
    assert crypto.kdr == 0 and crypto.session_params == ("KDR=0", "WSH=64")
    assert parse_crypto(f"3 S inline:{KEY30_B64} KDR=25").kdr is None  # type: ignore[union-attr]


def test_malformed_lines_are_counted_and_the_rest_read():
    text = (
        "v=0\r\nthis is not sdp\r\nc=IN IP4\r\nm=audio x RTP/AVP 0\r\n"
        "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0\r\na=rtcp:99999\r\na=setup:sideways\r\n"
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:@@@\r\nc=IN IP4 192.0.2.5\r\n"
    )
    sdp = parse_sdp(text)
    assert sdp.malformed_lines == 7
    (media,) = sdp.media
    assert (media.port, media.address, media.rtcp_port, media.crypto) == (
        4000,
        "192.0.2.5",
        4001,
        (),
    )


def test_bounds_stop_the_parse_and_say_so():
    many_media = "v=0\r\n" + "m=audio 4000 RTP/AVP 0\r\n" * (sdp_mod.MAX_MEDIA + 5)
    sdp = parse_sdp(many_media)
    assert sdp.truncated and len(sdp.media) == sdp_mod.MAX_MEDIA
    many_lines = "v=0\r\nm=audio 4000 RTP/AVP 0\r\n" + "a=x\r\n" * sdp_mod.MAX_SDP_LINES
    assert parse_sdp(many_lines).truncated
    crypto = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30_B64}\r\n"
    many_crypto = "m=audio 4000 RTP/SAVP 0\r\n" + crypto * (sdp_mod.MAX_CRYPTO_PER_MEDIA + 3)
    sdp = parse_sdp(many_crypto)
    assert sdp.truncated and len(sdp.media[0].crypto) == sdp_mod.MAX_CRYPTO_PER_MEDIA
    huge = ("m=audio 4000 RTP/AVP 0\r\n" + "a=" + "y" * sdp_mod.MAX_SDP_BYTES).encode()
    assert parse_sdp(huge).truncated
    keys = ";".join([f"inline:{KEY30_B64}"] * 40)
    line = parse_crypto(f"1 AES_CM_128_HMAC_SHA1_80 {keys}")
    assert line is not None and len(line.keys) == sdp_mod.MAX_KEYS_PER_CRYPTO


def test_hostile_bytes_never_raise():
    rng = random.Random(7)
    alphabet = b"vmcaot=: /|;^\r\n0123456789INP4SAVrtpmaphcryo_-" + bytes(range(256))
    fragments = [line.encode() for line in OFFER.split("\r\n")]
    for _ in range(3000):
        if rng.random() < 0.5:
            data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(200)))
        else:
            picked = [rng.choice(fragments) for _ in range(rng.randrange(12))]
            data = b"\r\n".join(p[: rng.randrange(len(p) + 1)] for p in picked)
        sdp = parse_sdp(data)
        for media in sdp.media:
            assert 0 <= media.port <= 65535 and 0 <= media.rtcp_port <= 65535


def _sip(headers: str, body: bytes) -> bytes:
    return (
        f"INVITE sip:bob@example.com SIP/2.0\r\nCall-ID: x\r\n{headers}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_the_sdp_body_of_a_sip_message():
    body = OFFER.encode()
    assert sdp_of_sip(_sip("Content-Type: application/sdp\r\n", body)) == body
    assert sdp_of_sip(_sip("c: Application/SDP;charset=utf-8\r\n", body)) == body
    assert sdp_of_sip(_sip("CONTENT-TYPE:application/sdp\r\n", body)) == body
    assert sdp_of_sip(_sip("Content-Type: text/plain\r\n", body)) is None
    assert sdp_of_sip(_sip("", body)) is None
    assert sdp_of_sip(_sip("Content-Type: application/sdp\r\n", b"")) is None
    gzip = "Content-Type: application/sdp\r\nContent-Encoding: gzip\r\n"
    assert sdp_of_sip(_sip(gzip, body)) is None
    assert sdp_of_sip(b"INVITE sip:x SIP/2.0\r\nContent-Type: application/sdp\r\n") is None


def test_the_sdp_part_of_a_multipart_body():
    body = (
        b"--unique-boundary-1\r\n"
        b"Content-Type: application/isup;version=itu-t92+\r\n\r\n"
        b"\x01\x00\x49\r\n"
        b"--unique-boundary-1\r\n"
        b"Content-Type: application/sdp\r\nContent-Disposition: session\r\n\r\n"
        + OFFER.encode()
        + b"\r\n--unique-boundary-1--\r\n"
    )
    quoted = 'Content-Type: multipart/mixed;boundary="unique-boundary-1"\r\n'
    assert sdp_of_sip(_sip(quoted, body)) == OFFER.encode()
    bare = "Content-Type: multipart/mixed; boundary=unique-boundary-1\r\n"
    assert sdp_of_sip(_sip(bare, body)) == OFFER.encode()
    assert sdp_of_sip(_sip("Content-Type: multipart/mixed\r\n", body)) is None
    other = body.replace(b"application/sdp", b"application/xml")
    assert sdp_of_sip(_sip(quoted, other)) is None
    assert parse_sdp(sdp_of_sip(_sip(quoted, body)) or b"").media[0].port == 49170
