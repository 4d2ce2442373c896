"""The whole offline pipeline on mutated media fixture captures (SIP over TLS and SRTP).

Input: a mutation program over tests/fixtures/media (:func:`fuzz.mutate.mutate_media`): the
pipeline target's operations (TLS records and fields, segments and datagrams dropped,
duplicated, reordered, cut, fragmented, bits flipped, timestamps moved, file formats, keys
and key logs) and those of media: UDP payload bits (anywhere, the RTP/RTCP header, the
SRTCP index, MKI and tag), RTCP lengths, counts and types lied about (in the clear part of
SRTCP, or inside a compound protected again with its real key), SRTP headers lied about
under their key, UDP ports moved, one datagram's payload in another's place, and SDP lines
of the SIP changed (the TLS connection then carries its SIP messages in plaintext).

The capture runs through the product as ``cli.run_offline`` wires it (fuzz/targets/
pipeline.py), with the media stage on and ``decrypt_rtp`` (--media-pcap); every event goes
through each real encoder (JSON lines, console, HEP type 5, the media pcap).

Failures: any exception escaping the product, any internal error the pipeline caught at a
flow's boundary (raised again here, so the finding names the product's line), SIP that was
never sent (:func:`fuzz.oracle.check_messages`), a media event the media oracle forbids
(:func:`fuzz.oracle.check_media`: RTCP of SRTP calls authenticated or nothing, nothing
invented or replayed, decrypted RTP that is its datagram's, RTP counts within the capture),
and, for an input that changes nothing, reports that differ from the ground truth's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shlex
from pathlib import Path

# the media stage imports these (and sip.headers) on the first media datagram, after the harness
# stopped instrumenting imports: imported here, they are instrumented, so that libFuzzer's
# coverage (what guides it) is that of the media code too, not only of what comes before it
from captagent_tls.media import calls, dtls, keyring, rtcp, rtp, sdp, srtp, text, unclaimed
from captagent_tls.media.reports import MediaEvent, RtcpReport
from captagent_tls.net.addresses import format_endpoint
from captagent_tls.pipeline import Pipeline, PipelineOptions
from captagent_tls.sinks.hep import HepTooLarge
from captagent_tls.sinks.media_pcap import MediaPcapSink
from captagent_tls.sip import headers
from captagent_tls.tls.keys import KeyStore
from fuzz import mutate
from fuzz.delta_debugging import minimize_list
from fuzz.mediatruth import MediaTruth, media_seeds
from fuzz.oracle import OracleFailure, check_media, check_messages, wire_pieces
from fuzz.paths import REPO
from fuzz.targets.pipeline import CollectingSink, run_capture, scratch_dir

MAX_LEN = 512
SLOW_SECONDS = 20.0
OPTIONS = PipelineOptions(decrypt_rtp=True)
INSTRUMENTED = (calls, dtls, keyring, rtcp, rtp, sdp, srtp, text, unclaimed, headers)


class MediaSink(CollectingSink):
    """Keeps every message and media event, after passing them through each real
    encoder (the media pcap of --media-pcap too)."""

    def __init__(self) -> None:
        super().__init__()
        self.media: list[MediaEvent] = []
        self.media_pcap = MediaPcapSink("media.pcap", out=io.BytesIO())

    def emit_media(self, event: MediaEvent) -> None:
        self.media.append(event)
        for encoder in self.encoders:
            encoder.emit_media(event)
        self.media_pcap.emit_media(event)
        if isinstance(event, RtcpReport):
            with contextlib.suppress(HepTooLarge):
                self.hep.encode_rtcp(event)

    def close(self) -> None:
        super().close()
        self.media_pcap.close()


class RecordingPipeline(Pipeline):
    """The pipeline, remembering the exceptions it catches at a flow's boundary: each is
    a finding (no input should cause one), raised again with its own traceback."""

    def __init__(self, keys: KeyStore, *args: object, **kwargs: object) -> None:
        super().__init__(keys, *args, **kwargs)  # type: ignore[arg-type]
        self.errors: list[Exception] = []

    def _internal_error(self, exc: Exception, flow: object, ts: int) -> None:
        self.errors.append(exc)
        super()._internal_error(exc, flow, ts)  # type: ignore[arg-type]


def mutated(data: bytes) -> mutate.Mutated:
    return mutate.mutate_media(data, media_seeds())


def prepare(data: bytes) -> tuple[mutate.Mutated, Path]:
    result = mutated(data)
    path = scratch_dir() / f"media{result.suffix}"
    path.write_bytes(result.data)
    return result, path


def one_input(data: bytes) -> None:
    result, path = prepare(data)
    check(result, path)


def _open_srtp(truth: MediaTruth) -> object:
    """An independent SRTP decryption with the fixture's keys (tests/support/srtcp_oracle):
    the contexts of the packet's source and SSRC first, then every other one."""
    from tests.support import srtcp_oracle

    contexts = {
        name: mutate.srtp_oracle_context(context)
        for name, context in truth.contexts.items()
        if context.suite
    }

    def open_srtp(src: str, packet: bytes) -> bytes | None:
        ssrc = int.from_bytes(packet[8:12], "big")
        first = truth.rtp_contexts.get((src, ssrc), [])
        for name in [*first, *(n for n in contexts if n not in first)]:
            for roc in range(4):
                try:
                    return bytes(contexts[name].unprotect_rtp(packet, roc))
                except (srtcp_oracle.AuthError, ValueError, IndexError):
                    continue
        return None

    return open_srtp


def check(result: mutate.Mutated, path: Path) -> None:
    """Run the capture at ``path`` and apply the oracles; raises on a failure."""
    sink = MediaSink()
    pipeline = run_capture(str(path), result, sink, OPTIONS, RecordingPipeline)
    if isinstance(pipeline, RecordingPipeline) and pipeline.errors:
        raise pipeline.errors[0]
    seed = result.seed
    truth: MediaTruth = seed.truth
    pieces = None

    def wire():  # type: ignore[no-untyped-def]
        nonlocal pieces
        if pieces is None:
            pieces = wire_pieces(str(path))
        return pieces

    check_messages(sink.messages, seed.sent, wire)
    plain = [(m.call_id, m.payload) for m in sink.messages if m.transport != "tls" and m.is_sip]
    check_media(
        list(sink.media),
        truth,
        wire,
        sip=plain if result.sip_texts is not None else None,
        forged=result.forged_rtcp,
        call_ids={call_id for call_id, _ in plain if call_id},
        open_srtp=_open_srtp(truth),  # type: ignore[arg-type]
    )
    if not result.operations:
        got = sorted(
            (format_endpoint(r.src), format_endpoint(r.dst), r.call_id, r.plaintext.hex())
            for r in sink.media
            if isinstance(r, RtcpReport)
        )
        expected = truth.expected_reports()
        if got != expected:
            raise OracleFailure(
                "unchanged-fixture-differs",
                f"{seed.name}: {len(set(expected) - set(got))} reports missing, "
                f"{len(set(got) - set(expected))} unexpected",
            )


def context(data: bytes) -> str:
    """What separates two oracle findings of the same rule: the fixture."""
    return mutated(data).seed.name


def artifacts(data: bytes) -> dict[str, bytes]:
    """The mutated capture, the key log it needs, and a command line that replays it."""
    result = mutated(data)
    name = f"capture{result.suffix}"
    files = {name: result.data}
    args = ["captagent-tls", "-r", name, "--json", "--media-pcap", "media.pcap"]
    for key in result.key_paths:
        args += ["-k", os.path.relpath(key, REPO)]
    if result.keylog is not None:
        files["keylog.txt"] = result.keylog.encode()
        args += ["--keylog", "keylog.txt"]
    files["command.txt"] = (
        f"# media fixture {result.seed.name}; key paths are relative to the repository\n"
        f"{shlex.join(args)}\n# operations:\n" + "".join(f"#   {op}\n" for op in result.operations)
    ).encode()
    return files


def seeds() -> list[bytes]:
    return mutate.media_seed_programs(len(media_seeds()))


def warm_up() -> None:
    media_seeds()


def capture_signature(result: mutate.Mutated) -> str | None:
    """The finding signature of a capture (with its keys), or None when it passes."""
    from fuzz import findings

    path = scratch_dir() / f"media-minimize{result.suffix}"
    path.write_bytes(result.data)
    try:
        check(result, path)
    except Exception as exc:
        return findings.from_exception("media", exc, b"", result.seed.name).signature
    return None


def minimize_capture(result: mutate.Mutated) -> mutate.Mutated:
    """Drop the packets of a failing classic pcap capture that it does not need to fail
    the same way (delta debugging over packets); other formats are returned as they are.
    The unchanged-fixture rule is left out once packets go (the capture is no longer the
    fixture), so a capture failing only that rule is returned whole."""
    from fuzz import capmodel

    wanted = capture_signature(result)
    if wanted is None or result.suffix != ".pcap" or not result.operations:
        return result
    linktype, packets = capmodel.read_pcap(result.data)
    nanos = result.data[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    big = result.data[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")

    def with_packets(chosen: list[capmodel.RawPacket]) -> mutate.Mutated:
        content = capmodel.write_pcap(linktype, chosen, nanos=nanos, big_endian=big)
        return dataclasses.replace(result, data=content)

    def fails(chosen: list[bytes]) -> bool:
        raw = [packets[int.from_bytes(c, "big")] for c in chosen]
        return capture_signature(with_packets(raw)) == wanted

    kept = minimize_list([i.to_bytes(4, "big") for i in range(len(packets))], fails)
    return with_packets([packets[int.from_bytes(c, "big")] for c in kept])
