"""The whole offline pipeline on mutated fixture captures.

Input: a mutation program (:mod:`fuzz.mutate`).  The mutated capture is written to a file and
read back through the product's own reader, with the wiring of ``cli.run_offline``: RSA keys
and the key log in a ``KeyStore``, the pcapng secrets read first, ``Pipeline`` with the
problem reporter, then ``finish``.  Every message goes through each real encoder (JSON lines,
console, pcap, HEPv3) and then the oracle (:mod:`fuzz.oracle`).

Failures: any exception escaping the product (a ``CaptureError``, which the command line turns
into one clear line, is not one), a message that was never sent, or, for an input that
changes nothing, messages that differ from those sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shlex
import tempfile
from pathlib import Path

from captagent_tls.capture import CaptureError
from captagent_tls.capture.files import CaptureReader
from captagent_tls.message import Message
from captagent_tls.pipeline import Pipeline, PipelineOptions
from captagent_tls.report import ProblemReporter, format_stats
from captagent_tls.sinks import Sink
from captagent_tls.sinks.console import ConsoleSink
from captagent_tls.sinks.hep import HepEncoder, HepOptions, HepTooLarge
from captagent_tls.sinks.jsonl import JsonLinesSink
from captagent_tls.sinks.pcapfile import PcapFileSink
from captagent_tls.tls.events import SessionSecret
from captagent_tls.tls.keylog import load_key_log
from captagent_tls.tls.keys import KeyStore
from fuzz import mutate
from fuzz.delta_debugging import minimize_list
from fuzz.oracle import OracleFailure, check_messages, received, wire_pieces
from fuzz.paths import REPO

MAX_LEN = 512
SLOW_SECONDS = 20.0


class CollectingSink(Sink):
    """Keeps every message, after passing it through each real encoder."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.encoders = (
            JsonLinesSink(io.StringIO()),
            ConsoleSink(io.StringIO()),
            PcapFileSink(io.BytesIO()),
        )
        self.hep = HepEncoder(HepOptions(password="secret", node_name="fuzz", correlation_id=True))

    def emit(self, message: Message) -> None:
        self.messages.append(message)
        for encoder in self.encoders:
            encoder.emit(message)
        if message.is_sip:
            with contextlib.suppress(HepTooLarge):  # counted and skipped by the HEP sink
                self.hep.encode(message)

    def close(self) -> None:
        for encoder in self.encoders:
            encoder.close()


_scratch: Path | None = None


def scratch_dir() -> Path:
    global _scratch
    if _scratch is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        _scratch = Path(tempfile.mkdtemp(prefix="captagent-fuzz-", dir=base))
    return _scratch


def run(path: str, mutated: mutate.Mutated) -> list[Message]:
    """The product on one capture file, wired as ``cli.run_offline`` wires it."""
    sink = CollectingSink()
    run_capture(path, mutated, sink)
    return sink.messages


def run_capture(
    path: str,
    mutated: mutate.Mutated,
    sink: CollectingSink,
    options: PipelineOptions | None = None,
    pipeline_class: type[Pipeline] = Pipeline,
) -> Pipeline | None:
    """:func:`run` with a given sink, options and pipeline class (the media target's);
    returns the pipeline that ran (None when the file could not be opened)."""
    keys = KeyStore()
    for private_key, key_path in zip(mutated.rsa_keys, mutated.key_paths, strict=True):
        keys.add_rsa_key(private_key, str(key_path))
    if mutated.keylog is not None:
        load_key_log(mutated.keylog, keys)
    problems = io.StringIO()
    secrets: list[SessionSecret] = []

    def embedded(text: bytes) -> None:
        load_key_log(text.decode("utf-8", "replace"), keys)

    try:
        with CaptureReader(path, on_secrets=embedded) as reader:
            if reader.is_pcapng:
                for _ in reader:
                    pass
    except CaptureError:
        return None  # one clear line and exit 1, before any output
    pipeline = pipeline_class(
        keys,
        [sink],
        ProblemReporter(problems).report,
        options or PipelineOptions(),
        on_secret=secrets.append,
    )

    def in_stream(text: bytes) -> None:
        if load_key_log(text.decode("utf-8", "replace"), keys).added:
            pipeline.keys_added()

    try:
        reader = CaptureReader(path, on_secrets=in_stream)
        try:
            with reader:
                for frame in reader:
                    pipeline.frame(frame)
        finally:
            pipeline.finish()
            sink.close()
    except CaptureError:
        pass  # the command line reports it in one line, after delivering what was read
    format_stats(pipeline.counters(), [sink])
    return pipeline


def prepare(data: bytes) -> tuple[mutate.Mutated, Path]:
    mutated = mutate.mutate(data)
    path = scratch_dir() / f"input{mutated.suffix}"
    path.write_bytes(mutated.data)
    return mutated, path


def one_input(data: bytes) -> None:
    mutated, path = prepare(data)
    check(mutated, path)


def check(mutated: mutate.Mutated, path: Path) -> None:
    """Run the capture at ``path`` and apply the oracle; raises on a failure."""
    messages = run(str(path), mutated)
    check_messages(messages, mutated.seed.sent, lambda: wire_pieces(str(path)))
    if not mutated.operations:
        got, sent = received(messages), mutated.seed.truth.sent()
        if got != sent:
            raise OracleFailure(
                "unchanged-fixture-differs",
                f"{mutated.seed.name}: {sum((sent - got).values())} messages "
                f"missing, {sum((got - sent).values())} unexpected",
            )


def context(data: bytes) -> str:
    """What separates two oracle findings of the same rule: the fixture."""
    return mutate.mutate(data).seed.name


def artifacts(data: bytes) -> dict[str, bytes]:
    """The mutated capture, the key log it needs, and a command line that replays it."""
    mutated = mutate.mutate(data)
    name = f"capture{mutated.suffix}"
    files = {name: mutated.data}
    args = ["captagent-tls", "-r", name, "--json"]
    for key in mutated.key_paths:
        args += ["-k", os.path.relpath(key, REPO)]
    if mutated.keylog is not None:
        files["keylog.txt"] = mutated.keylog.encode()
        args += ["--keylog", "keylog.txt"]
    files["command.txt"] = (
        f"# fixture {mutated.seed.name}; key paths are relative to the repository\n"
        f"{shlex.join(args)}\n# operations:\n" + "".join(f"#   {op}\n" for op in mutated.operations)
    ).encode()
    return files


def seeds() -> list[bytes]:
    return mutate.seed_programs()


def warm_up() -> None:
    mutate.seeds()


def capture_signature(mutated: mutate.Mutated) -> str | None:
    """The finding signature of a capture (with its keys), or None when it passes."""
    from fuzz import findings

    path = scratch_dir() / f"minimize{mutated.suffix}"
    path.write_bytes(mutated.data)
    try:
        check(mutated, path)
    except Exception as exc:
        return findings.from_exception("pipeline", exc, b"", mutated.seed.name).signature
    return None


def minimize_capture(mutated: mutate.Mutated) -> mutate.Mutated:
    """Drop the packets of a failing classic pcap capture that it does not need to fail the
    same way (delta debugging over packets); other formats are returned as they are."""
    from fuzz import capmodel

    wanted = capture_signature(mutated)
    if wanted is None or mutated.suffix != ".pcap":
        return mutated
    linktype, packets = capmodel.read_pcap(mutated.data)
    nanos = mutated.data[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    big = mutated.data[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")

    def with_packets(chosen: list[capmodel.RawPacket]) -> mutate.Mutated:
        content = capmodel.write_pcap(linktype, chosen, nanos=nanos, big_endian=big)
        return dataclasses.replace(mutated, data=content)

    def fails(chosen: list[bytes]) -> bool:
        raw = [packets[int.from_bytes(c, "big")] for c in chosen]
        return capture_signature(with_packets(raw)) == wanted

    kept = minimize_list([i.to_bytes(4, "big") for i in range(len(packets))], fails)
    return with_packets([packets[int.from_bytes(c, "big")] for c in kept])
