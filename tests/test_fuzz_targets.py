"""The fuzzing machinery (fuzz/) itself: the mutation programs, the oracles (each must be able
to fail), the targets' seeds, and the runner.  The fuzz runs themselves are in CI (.ci/run)
and in README "Fuzzing"; the reproducers they found are in test_fuzz_regressions.py."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from captagent_tls.message import Message  # noqa: E402
from fuzz import capmodel, findings, mutate  # noqa: E402
from fuzz.bytesource import ByteSource  # noqa: E402
from fuzz.oracle import OracleFailure, check_messages  # noqa: E402
from fuzz.targets import TARGETS  # noqa: E402
from tests.support.paths import FIXTURES, REPO

LOOPBACK = b"\x7f\x00\x00\x01"


def test_byte_source_is_deterministic_and_never_runs_dry():
    src = ByteSource(b"\x05\xff")
    assert src.below(3) == 2
    assert src.below(1) == 0  # uses the 0xff all the same
    assert src.uint(4) == 0 and src.take(3) == b"" and not src.flag()
    assert [ByteSource(b"\x07\x01").choice("abc") for _ in range(2)] == ["b", "b"]


def test_every_fixture_with_ground_truth_is_a_seed():
    names = {s.name for s in mutate.seeds()}
    expected = {js.stem for js in FIXTURES.glob("*.json") if js.with_suffix(".pcap").exists()}
    assert names == expected and len(names) >= 30


@pytest.mark.parametrize("index", [0, 15, 28])
def test_a_program_without_operations_gives_the_fixture_back(index):
    seed = mutate.seeds()[index]
    result = mutate.mutate(bytes([index]))
    assert result.seed is seed and result.operations == []
    _, packets = capmodel.read_pcap(result.data)
    assert [p.data for p in packets] == [p.data for p in seed.packets]
    assert result.key_paths == seed.key_paths and result.keylog == seed.keylog


def test_stream_edits_keep_the_segments_consistent():
    """Cutting the edited streams back into segments: an edit that changes nothing must give
    every packet back byte for byte (sequence numbers, acknowledgments, IP lengths, sums)."""
    for seed in mutate.seeds():
        work = mutate.Work(seed, key_paths=list(seed.key_paths), keylog=seed.keylog)
        for conn in range(len(seed.conns)):
            for direction in (0, 1):
                work.stream(conn, direction)
        mutate._rebuild_packets(work)
        assert [d for _, d, _ in work.packets] == [p.data for p in seed.packets], seed.name


def test_each_operation_changes_the_capture():
    index = next(i for i, s in enumerate(mutate.seeds()) if s.name == "tls12-aes128gcm-ems")
    original = mutate.mutate(bytes([index])).data
    changed = 0
    for op in range(len(mutate.ALL_OPS)):
        for variant in range(8):
            operands = bytes((variant * 37 + k * 11 + 3) & 0xFF for k in range(16))
            result = mutate.mutate(bytes([index, 0, op, len(operands)]) + operands)
            if (
                result.data != original
                or result.key_paths != mutate.seeds()[index].key_paths
                or result.keylog != mutate.seeds()[index].keylog
            ):
                changed += 1
                break
    assert changed == len(mutate.ALL_OPS)


def test_the_pipeline_gives_exactly_what_was_sent_for_every_unchanged_fixture():
    from fuzz.targets import pipeline

    for index in range(len(mutate.seeds())):
        pipeline.one_input(bytes([index]))


def _message(
    payload: bytes,
    transport: str = "tls",
    from_client: bool = True,
    client_port: int = 0,
    server_port: int = 0,
) -> Message:
    client, server = (LOOPBACK, client_port), (LOOPBACK, server_port)
    src, dst = (client, server) if from_client else (server, client)
    return Message(
        0,
        src,
        dst,
        transport,
        payload,
        None,
        True,
        from_client,
        "TLSv1.2",
        "TLS_RSA_WITH_AES_128_GCM_SHA256",
    )


def test_the_pipeline_oracle_rejects_what_was_never_sent():
    seed = mutate.seeds()[0]
    conn = seed.truth.connections[0]
    port, server = conn.client_port, conn.server_port
    first, second = conn.c2s[0], conn.c2s[1]
    sent = seed.sent

    def wire():
        return {((LOOPBACK, port), (LOOPBACK, server)): [b"plain bytes on the wire"]}

    check_messages([_message(first[5:40], client_port=port, server_port=server)], sent, wire)
    for bad in (b"HACKED" + first[6:], first[:20] + second[:20], first[::-1]):
        with pytest.raises(OracleFailure):
            check_messages([_message(bad, client_port=port, server_port=server)], sent, wire)
    # the right bytes under the wrong direction are not what that side sent
    s2c_only = conn.s2c[0]
    if s2c_only not in b"".join(conn.c2s):
        with pytest.raises(OracleFailure):
            check_messages([_message(s2c_only, client_port=port, server_port=server)], sent, wire)
    check_messages([_message(b"bytes on", "tcp", client_port=port, server_port=server)], sent, wire)
    with pytest.raises(OracleFailure):
        check_messages(
            [_message(b"bytes off", "tcp", client_port=port, server_port=server)], sent, wire
        )


def test_the_sip_oracle_sees_a_lost_unit(monkeypatch):
    from captagent_tls.sip.framing import SipFramer
    from fuzz.targets import sip

    seed = sip.seeds()[0]
    sip.one_input(seed)
    feed = SipFramer.feed
    monkeypatch.setattr(SipFramer, "feed", lambda self, data: feed(self, data)[1:])
    with pytest.raises(OracleFailure, match="sip-"):
        sip.one_input(seed)


def test_the_tcp_oracle_sees_shifted_bytes(monkeypatch):
    from captagent_tls.net.tcp import StreamData, TcpReassembler
    from fuzz.targets import tcp

    seed = tcp.seeds()[0]
    tcp.one_input(seed)
    segment = TcpReassembler.segment

    def shifted(self, seg, ts):
        return [
            e._replace(data=e.data[1:] + b"!") if isinstance(e, StreamData) else e
            for e in segment(self, seg, ts)
        ]

    monkeypatch.setattr(TcpReassembler, "segment", shifted)
    with pytest.raises(OracleFailure, match="tcp-invented"):
        tcp.one_input(seed)


def test_the_files_oracle_compares_plain_and_gzip_reading(monkeypatch):
    from captagent_tls.capture.files import CaptureReader
    from fuzz.targets import files

    seed = next(s for s in files.seeds() if s[0] & 1)
    files.one_input(seed)
    iterate = CaptureReader.__iter__

    def drop_last_frame_when_streamed(self):
        frames = list(iterate(self))
        return iter(frames[:-1] if self.path.endswith(".gz") else frames)

    monkeypatch.setattr(CaptureReader, "__iter__", drop_last_frame_when_streamed)
    with pytest.raises(OracleFailure, match="gzip-differs"):
        files.one_input(seed)


@pytest.mark.parametrize("name", [n for n in TARGETS if n != "pipeline"])
def test_every_seed_of_a_parser_target_passes(name):
    target = importlib.import_module(f"fuzz.targets.{name}")
    seeds = target.seeds()
    assert seeds
    for data in seeds:
        assert len(data) <= target.MAX_LEN
        target.one_input(data)


def test_a_finding_names_the_product_line():
    from captagent_tls.tls.handshake import parse_client_hello

    try:
        parse_client_hello(None)  # type: ignore[arg-type]
    except Exception as exc:
        finding = findings.from_exception("handshake", exc, b"")
    assert finding.location.startswith("src/captagent_tls/tls/handshake.py:")
    assert finding.signature.startswith("TypeError-")


def test_the_runner_runs_a_target_and_reports_its_inputs(tmp_path):
    pytest.importorskip("atheris")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fuzz.run",
            "records",
            "--runs",
            "300",
            "--fresh",
            "--work",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "records" in proc.stdout and " 300 inputs" in proc.stdout
    assert "Done 300 runs" in (tmp_path / "logs" / "records.log").read_text()


# ------------------------------------------------------------------- the media target


def _media_seed(name: str) -> tuple[int, mutate.Seed]:
    from fuzz.mediatruth import media_seeds

    return next((i, s) for i, s in enumerate(media_seeds()) if s.name == name)


def test_the_media_target_gives_exactly_the_reports_sent_for_every_unchanged_fixture():
    from fuzz.mediatruth import media_seeds
    from fuzz.targets import media

    assert len(media_seeds()) >= 20
    for index in range(len(media_seeds())):
        media.one_input(bytes([index]))


def test_media_sip_in_plaintext_instead_of_tls_gives_the_same_reports():
    """Every record of a media fixture's TLS connection is matched to the SIP message it
    carries; replaced by those messages in clear, the capture gives the same reports."""
    from fuzz.mediatruth import media_seeds
    from fuzz.targets import media

    def plaintext(work: mutate.Work, src: ByteSource) -> None:
        work.sip_texts = list(work.seed.sip_texts)

    seeds = media_seeds()
    for index in (0, 4, 19):
        seed = seeds[index]
        assert sum(r[3] >= 0 for r in seed.sip_records) == len(seed.sip_texts)
        program = bytes([index, 0, 0, 0])
        result = mutate.run_program(program, seeds, (plaintext,), (), (), (plaintext,))
        assert result.sip_texts == seed.sip_texts and b"\r\nCall-ID: " in result.data
        result.operations.clear()  # (so that check compares the reports with the truth)
        path = media.scratch_dir() / "plaintext.pcap"
        path.write_bytes(result.data)
        media.check(result, path)


def test_each_media_operation_changes_the_capture():
    from fuzz.targets import media

    index, seed = _media_seed("sdes-aes128-80")
    original = media.mutated(bytes([index])).data
    for op in range(len(mutate.MEDIA_OPS)):
        for variant in range(16):
            operands = bytes((variant * 37 + k * 11 + 3) & 0xFF for k in range(16))
            result = media.mutated(bytes([index, 0, op, len(operands)]) + operands)
            if result.data != original or result.key_paths != seed.key_paths:
                break
        else:
            pytest.fail(f"operation {op} ({mutate.MEDIA_OPS[op].__name__}) changed nothing")


def test_media_inputs_pass_and_replay_the_same():
    from fuzz.targets import media

    seeds = media.seeds()
    for data in seeds[::7]:
        assert len(data) <= media.MAX_LEN
        media.one_input(data)
        assert media.mutated(data).data == media.mutated(data).data


def _report(truth, plaintext: bytes, srtcp: bool = True, call_id: str | None = None):
    from captagent_tls.media.reports import RtcpReport

    sent = next(r for r in truth.rtcp if r.call_id)
    return RtcpReport(
        0,
        _endpoint(sent.src),
        _endpoint(sent.dst),
        call_id or sent.call_id,
        (),
        plaintext,
        srtcp,
        "{}",
    )


def _endpoint(text: str) -> tuple[bytes, int]:
    import ipaddress

    host, port = text.rsplit(":", 1)
    return ipaddress.ip_address(host).packed, int(port)


def test_the_media_oracle_rejects_what_was_never_sent_under_the_keys():
    from captagent_tls.media.reports import DecryptedRtp, MediaEnded, StreamReport
    from captagent_tls.media.rtp import RtpStream
    from fuzz.oracle import check_media

    _, seed = _media_seed("sdes-aes128-80")
    truth = seed.truth
    sent = next(r for r in truth.rtcp if r.call_id and r.context)
    src, dst = _endpoint(sent.src), _endpoint(sent.dst)
    pieces = {(src, dst): [sent.wire]}

    def check(events, **kw):
        check_media(events, truth, lambda: pieces, **kw)

    good = _report(truth, sent.plaintext)
    check([good])
    for events, rule in (
        ([_report(truth, sent.plaintext[:-4])], "srtcp-invented"),
        ([_report(truth, sent.wire)], "srtcp-invented"),
        ([good, good], "srtcp-replayed"),
        ([_report(truth, sent.plaintext, call_id="other")], "media-call-id"),
        ([_report(truth, sent.wire, srtcp=False)], "plain-rtcp-in-srtp-call"),
        ([_report(truth, sent.plaintext, srtcp=False)], "rtcp-not-on-wire"),
    ):
        with pytest.raises(OracleFailure, match=rule):
            check(events)
    # SDP the mutation changed: plain RTCP in a call it made plain, and what a NULL suite's
    # tag proves (the datagram itself) are right; a plaintext never sent still is not
    sip = [(sent.call_id, b"INVITE x SIP/2.0\r\n\r\nv=0\r\nm=audio 1 RTP/AVP 0\r\n")]
    check([_report(truth, sent.wire, srtcp=False)], sip=sip)
    check([_report(truth, sent.wire[:-14])], sip=sip)
    with pytest.raises(OracleFailure, match="srtcp-invented"):
        check([_report(truth, sent.plaintext[:-4])], sip=sip)
    # a plaintext the mutation protected with a real key was sent, in a way
    forged = sent.plaintext + b"\0\0\0\0"
    check([_report(truth, forged)], forged=[(sent.call_id, forged)])
    # decrypted RTP: the wire's header, the wire's length less the tag, what it decrypts to
    rtp_wire = bytes.fromhex("8000000100000000") + b"\x00\x00\x00\x07" + bytes(30)
    pieces[(src, dst)].append(rtp_wire)
    plain = rtp_wire[:-10]
    rtp = DecryptedRtp(0, src, dst, plain, sent.call_id)
    check([rtp], open_srtp=lambda s, d: plain)
    with pytest.raises(OracleFailure, match="rtp-not-authentic"):
        check([rtp], open_srtp=lambda s, d: None)
    with pytest.raises(OracleFailure, match="rtp-replayed"):
        check([rtp, rtp], open_srtp=lambda s, d: plain)
    for bad in (rtp_wire, rtp_wire[:-4], b"\x81" + plain[1:]):
        with pytest.raises(OracleFailure, match="rtp-not-on-wire"):
            check([rtp._replace(packet=bad)])
    # RTP statistics never count more packets than the capture carries
    stream = RtpStream(7, 1, 0)
    stream.update(1, 0, 0)
    ended = MediaEnded(0, sent.call_id, "idle", (StreamReport(src, dst, stream.stats()),))
    check([ended])
    stream.update(2, 160, 1)
    with pytest.raises(OracleFailure, match="rtp-count"):
        check([MediaEnded(0, sent.call_id, "idle", (StreamReport(src, dst, stream.stats()),))])


def test_the_media_target_sees_ciphertext_reported_and_internal_errors(monkeypatch):
    from captagent_tls.media import calls, srtp
    from fuzz.targets import media

    index, _ = _media_seed("sdes-aes128-80")
    unprotect = srtp.SrtpContext.unprotect_rtcp

    def changed(self, packet):  # type: ignore[no-untyped-def]
        plain = unprotect(self, packet)
        return plain[:12] + bytes([plain[12] ^ 1]) + plain[13:]  # (an NTP timestamp bit)

    monkeypatch.setattr(srtp.SrtpContext, "unprotect_rtcp", changed)
    with pytest.raises(OracleFailure, match="srtcp-invented"):
        media.one_input(bytes([index]))
    monkeypatch.setattr(srtp.SrtpContext, "unprotect_rtcp", unprotect)

    def broken(self, *args):  # type: ignore[no-untyped-def]
        raise KeyError("a bug")

    monkeypatch.setattr(calls.MediaTracker, "_rtcp", broken)
    with pytest.raises(KeyError, match="a bug"):  # caught by the pipeline, raised again
        media.one_input(bytes([index]))
