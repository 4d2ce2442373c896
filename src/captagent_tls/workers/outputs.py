"""The outputs that go through the parent: made in the workers, merged by capture time.

A worker formats each message for the console, JSON lines and ``-w`` itself (the same sinks as
without workers, writing to a tap instead of a file), so the parent only writes bytes and never
becomes the bottleneck.  What it sends is a list of records, ``(capture time, parts)``, where
``parts`` holds one item per output slot (None where the message gives the output nothing),
and a *watermark*: the earliest capture time it may still send a record for.  The parent keeps
records and writes those at or below the lowest watermark of all workers, so the
merged outputs are in capture time order however the workers' records interleave (a worker's
own records are not always in order: records held for keys come out later with their capture
time).

The call-flow report needs the messages themselves (it groups calls whose flows may live in
different workers), and the decryptable capture needs the frames: both go through the same
merge, so they too see everything in time order.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from operator import itemgetter
from typing import IO, TYPE_CHECKING, Any

from captagent_tls.capture import Frame
from captagent_tls.message import Message
from captagent_tls.sinks import Sink, write_failed

if TYPE_CHECKING:
    from captagent_tls.media.reports import MediaEvent
    from captagent_tls.sinks.media_pcap import MediaPcapSink
    from captagent_tls.sinks.pcapfile import PcapFileSink

# slots of a record's parts
JSON, CONSOLE, PCAP, REPORT, FRAME, MEDIA = range(6)
SLOTS = 6
NOTHING = (None,) * SLOTS
# a record's parts with one output's value in its slot
_SHAPES: tuple[Callable[[Any], tuple[Any, ...]], ...] = (
    lambda v: (v, None, None, None, None, None),
    lambda v: (None, v, None, None, None, None),
    lambda v: (None, None, v, None, None, None),
    lambda v: (None, None, None, v, None, None),
    lambda v: (None, None, None, None, v, None),
    lambda v: (None, None, None, None, None, v),
)

Record = tuple[int, tuple[Any, ...]]  # (capture time in ns, parts)


class Tap:
    """A stream that keeps what a sink writes, for one message at a time."""

    def __init__(self) -> None:
        self.parts: list[Any] = []
        self.write = self.parts.append  # (the sinks do not use what write returns)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def take(self, empty: str | bytes) -> Any:
        parts = self.parts
        if not parts:
            return None
        data = parts[0] if len(parts) == 1 else empty.join(parts)
        parts.clear()
        return data


class RecordingSink(Sink):
    """The worker's stand-in for the outputs the parent writes: each message becomes one
    record, with what each of those outputs would have written for it."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self._taps: list[tuple[int, Sink, Tap, str | bytes]] = []
        self.report = False
        self.frames = False
        self.media_pcap = False  # --media-pcap: decrypted RTP and RTCP, as pcap records

    def add(self, slot: int, make: Callable[[Tap], Sink], binary: bool = False) -> Sink:
        """Record the output ``make(tap)`` (e.g. a JsonLinesSink) in ``slot``."""
        tap = Tap()
        sink = make(tap)
        tap.parts.clear()  # a file header (-w): the parent writes its own
        self._taps.append((slot, sink, tap, b"" if binary else ""))
        return sink

    @property
    def records_messages(self) -> bool:
        """Some output the parent writes wants the messages (with HEP alone, none does)."""
        return bool(self._taps) or self.report or self.media_pcap

    def ready(self) -> None:
        """The outputs are all added: with one output and no report (the common case, e.g.
        ``--json``), each message takes the short way."""
        if len(self._taps) == 1 and not self.report:
            slot, sink, tap, empty = self._taps[0]
            emit, parts, shape = sink.emit, tap.parts, _SHAPES[slot]

            def emit_one(message: Message) -> None:
                emit(message)
                value = parts[0] if len(parts) == 1 else empty.join(parts) if parts else None
                parts.clear()
                self.records.append((message.ts_ns, shape(value)))

            self.emit = emit_one  # type: ignore[method-assign]

    def emit(self, message: Message) -> None:
        parts: list[Any] = [None] * SLOTS
        for slot, sink, tap, empty in self._taps:
            sink.emit(message)
            parts[slot] = tap.take(empty)
        if self.report:
            parts[REPORT] = message
        self.records.append((message.ts_ns, tuple(parts)))

    def emit_media(self, event: MediaEvent) -> None:
        """An RTCP report or a call's media summary, recorded as a message is; a decrypted
        RTP packet only for --media-pcap."""
        from captagent_tls.media.reports import DecryptedRtp, RtcpReport
        from captagent_tls.sinks.media_pcap import MediaPcapSink

        parts: list[Any] = [None] * SLOTS
        rtp = isinstance(event, DecryptedRtp)
        if self.media_pcap:
            if isinstance(event, DecryptedRtp):
                record = MediaPcapSink.record(event.ts_ns, event.src, event.dst, event.packet)
                parts[MEDIA] = (record, True)
            elif isinstance(event, RtcpReport):
                record = MediaPcapSink.record(event.ts_ns, event.src, event.dst, event.plaintext)
                parts[MEDIA] = (record, False)
        if not rtp:
            for slot, sink, tap, empty in self._taps:
                sink.emit_media(event)
                parts[slot] = tap.take(empty)
            if self.report:
                parts[REPORT] = event
        if any(part is not None for part in parts):
            self.records.append((event.ts_ns, tuple(parts)))

    def frame(self, frame: Frame) -> None:
        """A frame for the decryptable capture (``--write-decryptable``)."""
        self.records.append(
            (frame.ts_ns, (None, None, None, None, (frame.linktype, bytes(frame.data)), None))
        )

    def take(self) -> list[Record]:
        records = self.records
        self.records = []
        return records

    def close(self) -> None:
        for _, sink, _, _ in self._taps:
            sink.close()  # (the taps need no closing; a -w sink says what it left out)


class Writers:
    """Where the parent writes each slot: standard output (JSON lines, then the console
    text, as the sinks are ordered without workers), the ``-w`` file, the report and the
    decryptable capture."""

    def __init__(
        self,
        stdout: IO[str] | None,
        pcap: PcapFileSink | None,
        report: Sink | None,
        frame: Callable[[Frame], None] | None,
        flush_each: bool,
        media: MediaPcapSink | None = None,
    ):
        self.stdout = stdout
        self.pcap = pcap
        self.media = media
        self.report = report
        self.frame = frame
        self.flush_each = flush_each

    def write(self, records: list[Record]) -> None:
        text: list[str] = []
        binary: list[bytes] = []
        report, frame, media = self.report, self.frame, self.media
        if self.pcap is None and report is None and frame is None and media is None:
            # text only: the short way
            text = [part for _, parts in records for part in parts[:2] if part is not None]
            records = []
        for ts, parts in records:
            json_text, console_text, pcap_bytes, message, raw, decrypted = parts
            if decrypted is not None and media is not None:
                media.write_records([decrypted[0]], int(decrypted[1]), int(not decrypted[1]))
            if json_text is not None:
                text.append(json_text)
            if console_text is not None:
                text.append(console_text)
            if pcap_bytes is not None:
                binary.append(pcap_bytes)
            if message is not None and report is not None:
                if isinstance(message, Message):
                    report.emit(message)
                else:
                    report.emit_media(message)
            if raw is not None and frame is not None:
                frame(Frame(ts, raw[0], raw[1]))
        if text and self.stdout is not None:
            try:
                self.stdout.write("".join(text))
                if self.flush_each:
                    self.stdout.flush()
            except BrokenPipeError:
                raise
            except OSError as exc:
                raise write_failed(self.stdout, exc) from None
        if binary and self.pcap is not None:
            self.pcap.write_packets(binary)


class Merger:
    """Records of every worker, written in capture time order up to the lowest watermark.  A
    worker that is gone (finished, or dead and not replaced) holds nothing back.

    Each worker's records wait in a list of their own, kept in time order (a stable sort when
    a batch comes out of order: records held for keys come late with their capture time, so
    each worker's order stays among equal times); those at or below the lowest watermark are
    cut off every list by bisection and sorted together, which merges runs already in order
    in one pass at C speed, where a heap would take two Python-level steps per record."""

    FINISHED = float("inf")

    def __init__(self, writers: Writers, workers: int):
        self.writers = writers
        self.records: dict[int, list[Record]] = {i: [] for i in range(workers)}
        self.latest: dict[int, float] = dict.fromkeys(range(workers), 0)  # latest time waiting
        self.watermarks: dict[int, float] = dict.fromkeys(range(workers), 0)

    def add(self, worker: int, records: list[Record], watermark: float) -> None:
        if records:
            waiting = self.records.setdefault(worker, [])
            times = [record[0] for record in records]
            in_order = (not waiting or waiting[-1][0] <= times[0]) and times == sorted(times)
            waiting.extend(records)
            if not in_order:
                waiting.sort(key=_time)
            latest = waiting[-1][0]
            if latest > self.latest.get(worker, 0):
                self.latest[worker] = latest
        if worker in self.watermarks:
            self.watermarks[worker] = max(self.watermarks[worker], watermark)

    def pending(self, worker: int) -> int:
        """Records of the worker waiting for the others."""
        return len(self.records.get(worker, ()))

    def forget(self, worker: int) -> None:
        """The worker holds nothing back any more (it finished, or died)."""
        self.watermarks.pop(worker, None)

    def watch(self, worker: int, watermark: float = 0) -> None:
        """A worker (again): it holds back records from ``watermark`` on."""
        self.watermarks[worker] = watermark

    def lowest(self) -> float:
        return min(self.watermarks.values(), default=self.FINISHED)

    def slowest(self) -> list[int]:
        """The workers whose watermark holds the others back."""
        lowest = self.lowest()
        return [w for w, mark in self.watermarks.items() if mark == lowest]

    def write_ready(self) -> int:
        """Write every record at or below the lowest watermark; the number written."""
        lowest = self.lowest()
        ready: list[Record] = []
        for worker, waiting in self.records.items():
            if not waiting:
                continue
            if self.latest[worker] <= lowest:
                ready += waiting
                waiting.clear()
            else:
                cut = bisect_right(waiting, lowest, key=_time)
                ready += waiting[:cut]
                del waiting[:cut]
        if ready:
            ready.sort(key=_time)
            self.writers.write(ready)
        return len(ready)

    def held(self) -> int:
        return sum(len(waiting) for waiting in self.records.values())


_time = itemgetter(0)
