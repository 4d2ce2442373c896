"""Progress while a file is read, and a status line while capturing live, on stderr.

Both are drawn with tqdm, imported only when a line is shown: it is small, pure Python with no
dependencies of its own, keeps a bar to the terminal's width, and gives rates and an ETA.
(rich draws finer bars but brings pygments and markdown-it; nothing here needs them.)

Costs: the frame loop pays one counter and one length per frame and looks at the clock every
:data:`CHECK_EVERY` frames; the line is redrawn at most every :data:`FILE_REFRESH_S` seconds.
The live status line is drawn by a thread of its own once a second, from counters the capture
loop keeps anyway.

The bytes of a file: for a gzip file (and any file read as a stream) the reader tells how far
into the file as stored it has come (``CaptureReader.stored_position``).  A plain file is read
through a memory map, whose position lives inside the frame loop, so it is counted here from
the frames: each frame plus its record framing (pcap 16 bytes; pcapng 32 and its padding,
options not counted); that is exact for pcap and close for pcapng, and the bar ends at 100 %.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TextIO, cast

from captagent_tls.capture import Frame
from captagent_tls.counters import Counters
from captagent_tls.views.colour import is_terminal

if TYPE_CHECKING:
    from captagent_tls.capture.files import CaptureReader
    from captagent_tls.pipeline import Pipeline

CHECK_EVERY = 256  # frames between looks at the clock
FILE_REFRESH_S = 0.2
STATUS_REFRESH_S = 1.0
PCAP_FILE_HEADER = 24
PCAP_RECORD_HEADER = 16
PCAPNG_PACKET_FRAMING = 33.5  # enhanced packet block: 32 bytes and 1.5 of padding on average


class TerminalLine:
    """The last line of the terminal, which the progress bar or the status line owns.

    Text for the same terminal (the console view, problem reports) is written through
    :meth:`guard`: the line is cleared first, and comes back below the text at its next
    refresh.  One lock orders a refresh from the status thread and a message being written.
    """

    def __init__(self, out: TextIO):
        self.out = out
        self.lock = threading.Lock()
        self.bar: Any = None  # a tqdm bar, once shown
        self.drawn = False
        self._guarded_handlers: list[logging.StreamHandler[TextIO]] = []

    def show(self, bar: Any) -> None:
        self.bar = bar
        self.drawn = True  # tqdm draws a bar when it is made

    def redraw(self) -> None:
        with self.lock:
            if self.bar is not None:
                self.bar.refresh(nolock=True)
                self.drawn = True

    def clear(self) -> None:
        """Called with ``lock`` held, before text goes to the terminal."""
        if self.drawn and self.bar is not None:
            self.bar.clear(nolock=True)
            self.drawn = False

    def close(self) -> None:
        with self.lock:
            if self.bar is not None:
                self.bar.close()  # a file's bar stays with its last figures; a status goes
                self.bar = None
                self.drawn = False
        for handler in self._guarded_handlers:
            handler.setStream(self.out)
        self._guarded_handlers.clear()

    def guard_logging(self) -> None:
        """Log records written to the same terminal go through :meth:`guard` too, until
        :meth:`close`."""
        for handler in logging.getLogger().handlers + logging.getLogger("captagent_tls").handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self.out:
                handler.setStream(self.guard(self.out))
                self._guarded_handlers.append(handler)

    def guard(self, stream: TextIO) -> TextIO:
        """``stream`` as it should be written to while the line is shown."""
        if not is_terminal(stream):
            return stream  # a file or a pipe: nothing to share
        return cast(TextIO, _GuardedStream(stream, self))


class _GuardedStream:
    """A terminal stream that clears the progress line before each write (sinks only write
    and flush; anything else is passed through)."""

    def __init__(self, stream: TextIO, line: TerminalLine):
        self._stream = stream
        self._line = line

    def write(self, text: str) -> int:
        line = self._line
        with line.lock:
            line.clear()
            written = self._stream.write(text)
            self._stream.flush()  # before the line may come back below it
        return written

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _tqdm(leave: bool = True, **kwargs: Any) -> Any:
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: we refresh it ourselves
    return tqdm(dynamic_ncols=True, leave=leave, mininterval=0, miniters=0, delay=0, **kwargs)


def _count(number: float) -> str:
    return f"{number:,.0f}"


class FileProgress:
    """The bar while a capture file is read: bytes of the file, packets, SIP messages per
    second and the time left; on standard input a running count without a total."""

    def __init__(self, line: TerminalLine, path: str, reader: CaptureReader, pipeline: Pipeline):
        self.line = line
        self.reader = reader
        self.pipeline = pipeline
        # no total for standard input nor for a pipe (<(zcat x.pcap.gz) has no size)
        self.total: int | None = (os.stat(path).st_size if path != "-" else 0) or None
        name = os.path.basename(path) if path != "-" else "stdin"
        if self.total is not None:
            bar = _tqdm(
                total=self.total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=name,
                file=line.out,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                "[{elapsed}<{remaining}, {rate_fmt}{postfix}]",
            )
        else:
            bar = _tqdm(
                total=None,
                unit=" packets",
                unit_scale=True,
                desc=name,
                file=line.out,
                bar_format="{desc}: {n_fmt}{unit} [{elapsed}, {rate_fmt}{postfix}]",
            )
        line.show(bar)
        self.bar = bar
        self._started = time.monotonic()
        self._next_refresh = 0.0
        self._last = (self._started, 0)  # time, SIP messages: for the rate
        self._message_rate = 0.0
        self.frames_seen = 0
        self._data_bytes = 0
        self.complete = False  # the frames were read to the end

    def frames(self, frames: Iterable[Frame]) -> Iterator[Frame]:
        """``frames``, counted on the way; the line is redrawn from time to time."""
        count = 0
        data_bytes = 0
        countdown = CHECK_EVERY
        try:
            for frame in frames:
                yield frame
                count += 1
                data_bytes += len(frame.data)
                countdown -= 1
                if not countdown:
                    countdown = CHECK_EVERY
                    now = time.monotonic()
                    if now >= self._next_refresh:
                        self._next_refresh = now + FILE_REFRESH_S
                        self._update(now, count, data_bytes)
            self.complete = True
        finally:
            self.frames_seen = count
            self._data_bytes = data_bytes

    def _position(self, count: int, data_bytes: int) -> int:
        if self.total is None:
            return count
        stored = self.reader.stored_position
        if stored is None:
            framing = PCAP_RECORD_HEADER if self.reader.format == "pcap" else PCAPNG_PACKET_FRAMING
            stored = PCAP_FILE_HEADER + data_bytes + int(count * framing)
        return min(stored, self.total)

    def _update(self, now: float, count: int, data_bytes: int) -> None:
        messages = self.pipeline.stats.sip_messages
        then, before = self._last
        if now > then:  # SIP messages per second, smoothed over the last few refreshes
            rate = (messages - before) / (now - then)
            self._message_rate = (
                rate if not self._message_rate else (0.3 * rate + 0.7 * self._message_rate)
            )
        self._last = (now, messages)
        self._draw(self._position(count, data_bytes), count, messages)

    def _draw(self, position: int, count: int, messages: int) -> None:
        bar = self.bar
        with self.line.lock:
            bar.n = position
            bar.set_postfix_str(
                (f"{_count(count)} packets, " if self.total else "")
                + f"{_count(messages)} SIP messages, {_count(self._message_rate)}/s",
                refresh=False,
            )
            bar.refresh(nolock=True)
            self.line.drawn = True

    def close(self) -> None:
        """The end, with the figures of the whole run; when the whole file was read, the
        bar says 100 %."""
        messages = self.pipeline.stats.sip_messages
        self._message_rate = messages / max(time.monotonic() - self._started, 1e-9)
        count = self.frames_seen
        position = self._position(count, self._data_bytes)
        if self.complete and self.total is not None:
            position = self.total
        self._draw(position, count, messages)
        self.line.close()


class WorkersFileProgress:
    """The bar while worker processes read a capture file (``--workers``): each reads the
    whole file, so the bar follows the one furthest behind; the SIP messages are everyone's.
    The parent draws it from what the workers report."""

    def __init__(self, line: TerminalLine, path: str):
        self.line = line
        self.total = os.stat(path).st_size or None
        self.bar = _tqdm(
            total=self.total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=os.path.basename(path),
            file=line.out,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
            "[{elapsed}<{remaining}, {rate_fmt}{postfix}]",
        )
        line.show(self.bar)
        self._started = time.monotonic()
        self._next_refresh = 0.0
        self._last = (self._started, 0)
        self._message_rate = 0.0
        self.figures = (0, 0, 0)  # position, packets, SIP messages: the latest reported

    def update(self, position: int, packets: int, messages: int) -> None:
        self.figures = (position, packets, messages)
        now = time.monotonic()
        if now < self._next_refresh:
            return
        self._next_refresh = now + FILE_REFRESH_S
        then, before = self._last
        if now > then:
            rate = (messages - before) / (now - then)
            self._message_rate = (
                rate if not self._message_rate else (0.3 * rate + 0.7 * self._message_rate)
            )
        self._last = (now, messages)
        self._draw(position, packets, messages)

    def _draw(self, position: int, packets: int, messages: int) -> None:
        with self.line.lock:
            self.bar.n = min(position, self.total) if self.total else position
            self.bar.set_postfix_str(
                f"{_count(packets)} packets, {_count(messages)} SIP "
                f"messages, {_count(self._message_rate)}/s",
                refresh=False,
            )
            self.bar.refresh(nolock=True)
            self.line.drawn = True

    def close(self, complete: bool) -> None:
        """The end, with the figures of the whole run (100 % when every worker read the
        whole file)."""
        position, packets, messages = self.figures
        self._message_rate = messages / max(time.monotonic() - self._started, 1e-9)
        if complete and self.total:
            position = self.total
        self._draw(position, packets, messages)
        self.line.close()


class LiveStatus:
    """The status line of a live capture, redrawn about once a second by a thread: packets
    and SIP messages per second, kernel drops, what waits for HEP collectors, TCP flows, and
    TLS sessions waiting for keys."""

    def __init__(
        self,
        line: TerminalLine,
        snapshot: Callable[[], Counters],
        interval_s: float = STATUS_REFRESH_S,
    ):
        self.line = line
        self.snapshot = snapshot
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = (time.monotonic(), 0, 0)
        self._blind = 0.0

    def text(self, now: float) -> str:
        counters = self.snapshot()
        blind, self._blind = self._blind, counters.get("capture_blind_seconds")
        packets, messages = counters["packets"], counters["sip_messages"]
        then, frames_before, messages_before = self._last
        span = max(now - then, 1e-9)
        self._last = (now, packets, messages)
        drops = (
            counters["kernel_dropped_packets"] + counters["interface_dropped_packets"]
            if "kernel_received_packets" in counters.values
            else None
        )
        parts = [
            f"{_count((packets - frames_before) / span)} packets/s",
            f"{_count((messages - messages_before) / span)} SIP messages/s",
            f"kernel drops {_count(drops)}" if drops is not None else "kernel drops ?",
        ]
        if "hep_queued" in counters.values:
            parts.append(f"HEP queue {_count(counters.total('hep_queued'))}")
        parts.append(f"flows {_count(counters['active_flows'])}")
        parts.append(f"waiting for keys {_count(counters['tls_waiting_connections'])}")
        if self._blind > blind:  # time without capture grew since the last line
            parts.insert(0, "NO CAPTURE: the interface is down or gone")
        return " | ".join(parts)

    def start(self) -> None:
        self.line.show(
            _tqdm(
                leave=False,
                total=None,
                file=self.line.out,
                bar_format="{desc}",
                desc="capturing...",
            )
        )
        counters = self.snapshot()
        self._last = (time.monotonic(), counters["packets"], counters["sip_messages"])
        self._thread = threading.Thread(target=self._run, name="status line", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            text = self.text(time.monotonic())
            with self.line.lock:
                bar = self.line.bar
                if bar is None:
                    return
                bar.set_description_str(text, refresh=False)
                bar.refresh(nolock=True)
                self.line.drawn = True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.line.close()  # not left on the screen: the final stats say it better
