"""Run the pipeline in-process on a capture's frames, which a test may first edit (drop a
segment, change a byte), and collect what comes out: messages, problems, stats."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captagent_tls.capture import Frame
from captagent_tls.capture.files import CaptureReader
from captagent_tls.keyfiles import load_rsa_keys
from captagent_tls.message import Message
from captagent_tls.pipeline import Pipeline, PipelineOptions
from captagent_tls.tls.events import TlsProblem
from captagent_tls.tls.keylog import load_key_log
from captagent_tls.tls.keys import KeyStore


@dataclass
class Collected:
    messages: list[Message] = field(default_factory=list)
    problems: list[TlsProblem] = field(default_factory=list)
    media: list[Any] = field(default_factory=list)  # RTCP reports, calls' media summaries

    def emit(self, message: Message) -> None:
        self.messages.append(message)

    def emit_media(self, event: Any) -> None:
        self.media.append(event)

    def close(self) -> None:
        pass

    def problem_kinds(self) -> list[str]:
        return [p.kind for p in self.problems]

    def problem_text(self) -> str:
        return "\n".join(p.message for p in self.problems)


def read_frames(capture: str | os.PathLike[str]) -> list[Frame]:
    with CaptureReader(os.fspath(capture)) as reader:
        return [Frame(f.ts_ns, f.linktype, bytes(f.data)) for f in reader]


def key_store(
    rsa_keys: Sequence[Path | str] = (),
    keylog: Path | str | None = None,
    keys: KeyStore | None = None,
) -> KeyStore:
    keys = keys if keys is not None else KeyStore()
    for path in rsa_keys:
        for key in load_rsa_keys(os.fspath(path)):
            keys.add_rsa_key(key, os.fspath(path))
    if keylog is not None:
        load_key_log(Path(keylog).read_text(encoding="utf-8", errors="replace"), keys)
    return keys


def run_frames(
    frames: Iterable[Frame],
    keys: KeyStore,
    options: PipelineOptions | None = None,
    between: Callable[[Pipeline, Frame], None] | None = None,
) -> tuple[Collected, Pipeline]:
    """Feed frames through a fresh pipeline; ``between`` runs before each frame (to add keys
    at a given capture time, say)."""
    out = Collected()
    pipeline = Pipeline(keys, [out], out.problems.append, options)
    for frame in frames:
        if between is not None:
            between(pipeline, frame)
        pipeline.frame(frame)
    pipeline.finish()
    return out, pipeline


@dataclass(frozen=True)
class CapturedSegment:
    """A TCP segment with payload, and what TLS records it carries, read without keys."""

    index: int  # of its frame
    sport: int
    dport: int
    records: tuple[str, ...]  # "HS:1" (a plaintext ClientHello), "CCS", "AD", "HS*" ...


def tls_segments(frames: Sequence[Frame]) -> list[CapturedSegment]:
    """The segments of a capture whose payload starts at a record boundary, with their records:
    plaintext handshake messages by type, protected ones as ``HS*``, application data as
    ``AD``.  (The fixtures' peers write whole records per segment on loopback.)"""
    from captagent_tls.net.packet import Segment, decode

    found = []
    for index, frame in enumerate(frames):
        packet = decode(frame.linktype, frame.data)
        if type(packet) is not Segment or not packet.payload:
            continue
        data = bytes(packet.payload)
        records: list[str] = []
        pos = 0
        protected = False
        while pos + 5 <= len(data):
            content_type = data[pos]
            length = int.from_bytes(data[pos + 3 : pos + 5], "big")
            body = data[pos + 5 : pos + 5 + length]
            if content_type == 22 and not protected:
                at = 0
                while at + 4 <= len(body):
                    records.append(f"HS:{body[at]}")
                    at += 4 + int.from_bytes(body[at + 1 : at + 4], "big")
            else:
                records.append({20: "CCS", 21: "AL", 22: "HS*", 23: "AD"}.get(content_type, "?"))
                protected = protected or content_type == 20
            pos += 5 + length
        found.append(CapturedSegment(index, packet.sport, packet.dport, tuple(records)))
    return found
