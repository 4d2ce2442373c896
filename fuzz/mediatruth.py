"""Ground truth of the media fixture captures (tests/fixtures/media/NAME.json), for the
``media`` fuzz target: what the peers really sent.

Read here, for the fuzzer only: the calls (Call-ID, profile), every RTCP compound sent (its
plaintext, its wire bytes, its call, the key that protected it, whether it was protected at
all), the SRTP keys (``contexts``), the RTP streams and every SIP message of the TLS
connection in the order sent.  tests/fixtures/media/README.md describes the format.

A media fixture is also a mutation seed (:func:`media_seeds`): its capture is read by
:func:`fuzz.mutate.load_capture` like any fixture, and the records of its SIP-over-TLS
connection are matched to the SIP messages they carry, so that a mutation can replace the
TLS by those messages in plaintext, SDP edited (``mutate.op_sdp``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from fuzz import mutate, tlsmap
from fuzz.truth import SentStreams

MEDIA = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "media"

# bytes a TLS record adds to the plaintext it carries: TLS 1.2 AES-GCM (explicit nonce and
# tag), TLS 1.3 AEAD (inner content type and tag)
RECORD_OVERHEADS = (24, 17)


@dataclass(frozen=True)
class Context:
    """One SRTP master key of the capture (``contexts`` in the JSON)."""

    id: str
    suite: str | None  # None: plain RTP/RTCP
    master: bytes  # key || salt
    mki: bytes
    unencrypted_srtcp: bool
    srtp_overhead: int  # bytes SRTP adds to an RTP packet (tag and MKI)


@dataclass(frozen=True)
class SentRtcp:
    """One RTCP compound sent: what the ground truth says of it."""

    src: str
    dst: str
    call_id: str | None  # None: belongs to no call (nothing may be reported)
    context: str | None  # None: sent unprotected (a plain context is None here too)
    plaintext: bytes
    wire: bytes
    authenticated: bool  # False: sent unprotected inside an SRTP call (baresip)
    index: int | None  # SRTCP index
    encrypted: bool  # the E flag


@dataclass
class MediaTruth:
    name: str
    path: Path
    call_ids: list[str]
    secure: dict[str, bool]  # Call-ID -> its SDP's profile is SRTP (RTP/SAVP, ...SAVPF)
    rtcp: list[SentRtcp]
    contexts: dict[str, Context]
    #: (source endpoint text, SSRC) -> ids of the contexts its RTP was protected with
    rtp_contexts: dict[tuple[str, int], list[str]]
    sip: list[tuple[str, str, bytes]]  # (direction, Call-ID, message), in the order sent
    client: tuple[str, int]
    server: tuple[str, int]
    key_paths: list[Path] = field(default_factory=list)
    keylog: Path | None = None

    def sent(self) -> SentStreams:
        """What each side of the SIP-over-TLS connection sent, for :mod:`fuzz.oracle`."""
        streams = SentStreams()
        for direction in ("c2s", "s2c"):
            streams.by_connection[(self.client[1], self.server[1], direction)] = b"".join(
                text for d, _, text in self.sip if d == direction
            )
        return streams

    def authentic(self) -> list[tuple[str, bytes]]:
        """(Call-ID, plaintext) of every SRTCP compound a call's keys authenticate."""
        return [
            (r.call_id, r.plaintext)
            for r in self.rtcp
            if r.call_id is not None and r.context is not None and r.authenticated
        ]

    def plain(self) -> list[tuple[str, bytes]]:
        """(Call-ID, compound) of the RTCP sent unprotected in a plain (RTP/AVP) call."""
        return [
            (r.call_id, r.plaintext)
            for r in self.rtcp
            if r.call_id is not None and r.context is None and r.authenticated
        ]

    def expected_reports(self) -> list[tuple[str, str, str, str]]:
        """(src, dst, Call-ID, plaintext hex) of every report the capture must give, as
        tests/test_media_fixtures.py compares them."""
        return sorted(
            (r.src, r.dst, r.call_id, r.plaintext.hex())
            for r in self.rtcp
            if r.call_id is not None and r.authenticated
        )


def _endpoint(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)


def load_media_truth(path: Path) -> MediaTruth:
    raw = json.loads(path.read_text())
    contexts = {}
    for c in raw["contexts"]:
        master = bytes.fromhex(c.get("master_key") or "") + bytes.fromhex(
            c.get("master_salt") or ""
        )
        contexts[c["id"]] = Context(
            c["id"],
            c["suite"],
            master,
            bytes.fromhex(c.get("mki") or ""),
            bool(c.get("unencrypted_srtcp")),
            (c.get("srtp_tag_len") or 0) + (c.get("mki_len") or 0),
        )
    rtcp = [
        SentRtcp(
            r["src"],
            r["dst"],
            r["call_id"],
            r["context"] if r["context"] and contexts[r["context"]].suite else None,
            bytes.fromhex(r["plaintext"]),
            bytes.fromhex(r["wire"]),
            r.get("authenticated", True) is not False,
            r.get("srtcp_index"),
            bool(r.get("e_flag")),
        )
        for r in raw["rtcp"]
    ]
    rtp_contexts: dict[tuple[str, int], list[str]] = {}
    for stream in raw.get("rtp", []):
        if stream.get("context") and contexts[stream["context"]].suite:
            rtp_contexts.setdefault((stream["src"], stream["ssrc"]), []).append(stream["context"])
    tls = raw["tls"]
    keys = [(path.parent / tls["key"]).resolve()] if tls.get("key") else []
    return MediaTruth(
        path.stem,
        path,
        [c["call_id"] for c in raw["calls"]],
        {c["call_id"]: "SAVP" in (c.get("profile") or "") for c in raw["calls"]},
        rtcp,
        contexts,
        rtp_contexts,
        [(s["dir"], s["call_id"], s["text"].encode("utf-8")) for s in raw["sip"]],
        _endpoint(tls["client"]),
        _endpoint(tls["server"]),
        keys,
        path.parent / tls["keylog"] if tls.get("keylog") else None,
    )


def sip_records(seed: mutate.Seed, truth: MediaTruth) -> list[tuple[int, int, int, int]]:
    """(connection, direction, record field, SIP message) for every record of the seed's
    TCP streams: the index of the message it carries (in ``truth.sip``), -1 for a record
    that carries none (handshake, alert, ticket).  Records are matched to messages by
    their lengths, in order; empty when they do not all match (no plaintext SIP then)."""
    out: list[tuple[int, int, int, int]] = []
    wanted = {
        direction: [i for i, (d, _, _) in enumerate(truth.sip) if d == name]
        for direction, name in ((0, "c2s"), (1, "s2c"))
    }
    for conn_index, conn in enumerate(seed.conns):
        client = conn.client[1] == truth.client[1] and conn.server[1] == truth.server[1]
        for direction, d in enumerate(conn.directions):
            pending = list(wanted[direction]) if client else []
            for field_index, fld in enumerate(d.fields):
                if fld.kind != tlsmap.RECORD:
                    continue
                message = -1
                body = fld.length - 5
                if pending and d.stream[fld.offset] == tlsmap.APPLICATION_DATA:
                    size = len(truth.sip[pending[0]][2])
                    if body - size in RECORD_OVERHEADS:
                        message = pending.pop(0)
                out.append((conn_index, direction, field_index, message))
            if pending:
                return []
    return out


@cache
def media_seeds() -> tuple[mutate.Seed, ...]:
    """Every media fixture capture with its ground truth (the HEP reference excepted), in
    name order."""
    found = []
    for path in sorted(MEDIA.glob("*.json")):
        if not path.with_suffix(".pcap").exists() or "hep5" in path.stem:
            continue
        truth = load_media_truth(path)
        keylog = (
            truth.keylog.read_text(encoding="utf-8", errors="replace") if truth.keylog else None
        )
        seed = mutate.load_capture(
            path.stem, path.with_suffix(".pcap"), truth, truth.sent(), truth.key_paths, keylog
        )
        seed.sip_texts = [text for _, _, text in truth.sip]
        seed.sip_records = sip_records(seed, truth)
        found.append(seed)
    return tuple(found)
