"""Fuzz targets: one module per parser, and one for the whole offline pipeline.

Each module holds ``one_input(data: bytes) -> None`` (raises on a failure: an exception the
product let escape, or an oracle rule broken), ``seeds() -> list[bytes]`` (a starting
corpus) and ``MAX_LEN`` (the longest input libFuzzer should make); optionally
``SLOW_SECONDS`` (one input taking longer is a finding), ``DICTIONARY`` (tokens for
libFuzzer's ``-dict``), ``warm_up()``, ``context(data)`` and ``artifacts(data)`` (files
saved with a finding).  None of them needs atheris: a saved
input replays with ``one_input`` alone (tests/test_fuzz_regressions.py).
"""

from __future__ import annotations

#: target -> share of a split budget (``python -m fuzz.run all --budget S``)
TARGETS: dict[str, float] = {
    "pipeline": 4.0,  # the whole offline path, mutated fixture captures
    "files": 1.0,  # capture/files.py: pcap, pcapng (DSB), gzip
    "packet": 0.5,  # net/packet.py decode
    "defrag": 0.5,  # net/ip.py Defragmenter
    "tcp": 1.0,  # net/tcp.py TcpReassembler
    "handshake": 0.5,  # tls/handshake.py parsers
    "records": 0.5,  # tls/record_stream.py find_record_start
    "connection": 1.5,  # tls/connection.py: record streams through TlsTracker
    "sip": 1.0,  # sip/framing.py SipFramer and frame_datagram
    "keylog": 0.5,  # tls/keylog.py load_key_log
    "config": 1.0,  # config/ load_native (TOML) and load_captagent (XML)
    "sdp": 0.5,  # media/sdp.py parse_sdp and sdp_of_sip
    "rtcp": 0.5,  # media/rtcp.py parse_compound and hep_json
    "srtcp": 1.0,  # media/srtp.py SRTCP/SRTP protect, unprotect, tamper, replay
    "dtls": 0.5,  # media/dtls.py DtlsTracker and DTLS-SRTP keys
    "media": 1.0,  # the whole offline path on mutated media fixture captures (SRTP calls)
}
