"""Cross-check the product's decrypted bytes against tshark's, byte for byte.

For each capture with an RSA server key, the product runs as ``-r CAPTURE -k KEY --json``
and tshark (Debian's, an independent TLS implementation) decrypts the same file with the
same key. Per TCP connection and per direction, the product's payloads (kinds "sip" and
"raw", in output order) concatenated must equal tshark's ``follow,tls,raw`` bytes.

Captures: tests/fixtures/captures/NAME.pcap with NAME.json (keys in tests/fixtures/keys/),
and ../shared/corpus/sip/ scenarios whose suite is RSA AES-GCM (skipped without the corpus).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest

from tests.support.cli import check_contract, key_args, payload_bytes, run_json
from tests.support.groundtruth import GroundTruth, load_groundtruth, pcap_time_range, scenario_files
from tests.support.oracle import Stream, endpoint, tshark_decrypt
from tests.support.paths import CORPUS, FIXTURES

RSA_GCM = {"AES128-GCM-SHA256", "AES256-GCM-SHA384"}

# tshark 4.0 drops everything after an out-of-order TCP segment unless this is on (see
# corpus/public/INDEX.md, the -seg500-ooo capture). It is only used when tshark's default
# output disagrees with the ground truth, so that the oracle stays tshark's plain default
# wherever that is good enough.
OUT_OF_ORDER = ("-o", "tcp.reassemble_out_of_order:TRUE")

# RFC 5626 CRLF keep-alives between SIP messages ("\r\n\r\n" ping, "\r\n" pong) are not SIP
# messages, and the product may leave them out of its output. When this is True, a direction
# matches if the product's bytes equal tshark's either as they are or with exactly those
# keep-alives removed (only CRLF runs at message boundaries; nothing else may be missing).
# Set it to False to require the keep-alives as "raw" objects in --json.
ALLOW_DROPPED_KEEPALIVES = True

Direction = tuple[str, str]  # (src endpoint, dst endpoint)

_HEADER_END = b"\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*$", re.I | re.M)


def strip_keepalives(data: bytes) -> bytes:
    """Remove the CRLF runs that sit between SIP messages; keep everything else.

    Walks header + Content-Length body; an incomplete tail is kept as it is.
    """
    out: list[bytes] = []
    pos, n = 0, len(data)
    while pos < n:
        while data.startswith(b"\r\n", pos):
            pos += 2
        end = data.find(_HEADER_END, pos)
        if end < 0:
            out.append(data[pos:])
            break
        lengths = _CONTENT_LENGTH.findall(data[pos:end])
        stop = min(n, end + len(_HEADER_END) + (int(lengths[0]) if lengths else 0))
        out.append(data[pos:stop])
        pos = stop
    return b"".join(out)


def _comparable(data: bytes) -> bytes:
    return strip_keepalives(data) if ALLOW_DROPPED_KEEPALIVES else data


def _fixture_cases() -> list:
    cases = []
    for cap, js in scenario_files(FIXTURES):
        try:
            gt = load_groundtruth(js)
        except (ValueError, KeyError):
            continue  # not a scenario file
        if gt.damaged:
            continue  # tshark handles damaged records its own way: see test_fixtures.py
        if gt.keys and all(k.exists() for k in gt.keys) and not gt.needs_keylog:
            cases.append(pytest.param(cap, js, id=cap.stem))
    return cases


def _corpus_cases() -> list:
    cases = []
    for cap, js in scenario_files(CORPUS / "sip"):
        gt = load_groundtruth(js)
        if gt.settings.get("cipher") in RSA_GCM and gt.keylog is None and not gt.needs_keylog:
            cases.append(pytest.param(cap, js, id=cap.stem))
    return cases


# --------------------------------------------------------------------------- helpers


def product_by_direction(objs: list[dict]) -> dict[Direction, bytes]:
    """Concatenate the product's payload bytes per (src, dst), in output order."""
    parts: dict[Direction, list[bytes]] = defaultdict(list)
    for obj in objs:
        key = (endpoint(obj["src_ip"], obj["src_port"]), endpoint(obj["dst_ip"], obj["dst_port"]))
        parts[key].append(payload_bytes(obj))
    return {k: b"".join(v) for k, v in parts.items()}


def groundtruth_by_direction(gt: GroundTruth) -> dict[Direction, bytes]:
    """Plaintext per direction (messages and keep-alives) of the decryptable connections."""
    out: dict[Direction, bytes] = {}
    for conn in gt.connections:
        if not conn.expect_decrypt:
            continue  # its server key is not given: tshark and the product must show nothing
        assert conn.client_ip and conn.server_ip and conn.server_port, (
            f"{gt.name}: incomplete connection"
        )
        client = endpoint(conn.client_ip, conn.client_port)
        server = endpoint(conn.server_ip, conn.server_port)
        out[(client, server)] = conn.stream("c2s")
        out[(server, client)] = conn.stream("s2c")
    return out


def tshark_by_direction(streams: list[Stream]) -> dict[Direction, bytes]:
    out: dict[Direction, bytes] = {}
    for s in streams:
        for key, data in s.by_direction().items():
            assert key not in out, f"4-tuple {key} appears in two TCP streams"
            out[key] = data
    return out


def oracle(pcap: Path, gt: GroundTruth) -> tuple[list[Stream], dict[Direction, bytes]]:
    """tshark's decrypted bytes per direction; retried with out-of-order reassembly if needed."""
    truth = groundtruth_by_direction(gt)

    def decrypt(extra: tuple[str, ...]) -> tuple[list[Stream], dict[Direction, bytes]]:
        streams = tshark_decrypt(
            pcap, rsa_keys=gt.keys, tls_ports=gt.server_ports, extra_opts=extra
        )
        return streams, tshark_by_direction(streams)

    streams, got = decrypt(())
    if any(got.get(k, b"") != v for k, v in truth.items()):
        streams, got = decrypt(OUT_OF_ORDER)
    return streams, got


def crosscheck(pcap: Path, js: Path) -> None:
    gt = load_groundtruth(js)
    objs = run_json(["-r", pcap, *key_args(gt.keys)])
    for obj in objs:
        check_contract(obj)
    assert objs, "the product emitted nothing"

    streams, theirs = oracle(pcap, gt)
    ours = product_by_direction(objs)
    truth = groundtruth_by_direction(gt)

    # Nothing decrypted where tshark decrypted nothing, and the reverse.
    ours_nonempty = {k for k, v in ours.items() if _comparable(v)}
    theirs_nonempty = {k for k, v in theirs.items() if _comparable(v)}
    assert ours_nonempty == theirs_nonempty, (
        f"directions with data differ: only product {sorted(ours_nonempty - theirs_nonempty)}, "
        f"only tshark {sorted(theirs_nonempty - ours_nonempty)}"
    )

    for key in sorted(theirs_nonempty):
        mine, tshark = ours[key], theirs[key]
        if key in truth and tshark != truth[key]:
            # tshark lost data here (a gap in the capture): what it did decrypt must be a
            # prefix of the truth, and the product must agree with it up to the gap.
            assert truth[key].startswith(tshark), (
                f"{key}: tshark's output is not a prefix of the ground truth"
            )
            assert mine.startswith(tshark) or _comparable(mine).startswith(_comparable(tshark)), (
                f"{key}: product differs from tshark before tshark's gap"
            )
            continue
        if mine == tshark or (ALLOW_DROPPED_KEEPALIVES and mine == strip_keepalives(tshark)):
            continue
        want = _comparable(tshark)
        at = next(
            (i for i, (a, b) in enumerate(zip(mine, want, strict=False)) if a != b),
            min(len(mine), len(want)),
        )
        lo, hi = max(0, at - 20), at + 40
        pytest.fail(
            f"{key}: product {len(mine)} bytes, tshark {len(tshark)} bytes "
            f"({len(want)} without keep-alives), first difference at {at}: "
            f"product {mine[lo:hi]!r} vs tshark {want[lo:hi]!r}"
        )

    # direction labels: c2s iff the source is the TCP client (the SYN sender, per tshark)
    clients = {s.client for s in streams if s.client}
    for obj in objs:
        src = endpoint(obj["src_ip"], obj["src_port"])
        want = "c2s" if src in clients else "s2c"
        assert obj["direction"] == want, (
            f"{src} -> {obj['dst_ip']}:{obj['dst_port']} labelled {obj['direction']}"
        )

    # message times lie within the capture
    first, last = pcap_time_range(pcap)
    for obj in objs:
        assert first - 1e-6 <= obj["ts"] <= last + 1e-6, f"ts {obj['ts']} outside [{first}, {last}]"


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("pcap", "js"), _fixture_cases())
def test_fixture_matches_tshark(pcap: Path, js: Path, tshark: str) -> None:
    crosscheck(pcap, js)


@pytest.mark.parametrize(("pcap", "js"), _corpus_cases())
def test_corpus_matches_tshark(pcap: Path, js: Path, tshark: str, corpus: Path) -> None:
    crosscheck(pcap, js)


def test_cases_were_found() -> None:
    """Guard against an empty parametrization silently testing nothing."""
    if not _fixture_cases() and not CORPUS.is_dir():
        pytest.skip("no fixture captures yet and no shared corpus")
    assert _fixture_cases() or _corpus_cases()


def test_strip_keepalives() -> None:
    a = b"OPTIONS sip:x SIP/2.0\r\nl: 4\r\n\r\n\r\n\r\n"  # a body that is itself CRLFs
    b = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert strip_keepalives(b"\r\n\r\n" + a + b"\r\n" + b + b"\r\n\r\n" + b[:10]) == a + b + b[:10]
    assert strip_keepalives(b"not sip at all") == b"not sip at all"
