"""The call-flow report (``--report calls.html``): one self-contained HTML file with the list
of calls and, per call, a ladder diagram of its messages, in the way of sngrep and HOMER.

The file loads nothing from the network: style, script and data are inside it.  The data is
embedded once, as JSON, and the page's script does the rest: the call list is sorted,
filtered and shown a page at a time, and a call's ladder (SVG) is drawn only when the call is
opened, so a capture of 10,000 calls opens as fast as the list's first page.  The messages,
the bulk of the file, are parsed the first time a ladder is opened.

While the capture is read, each message goes to an unnamed temporary file as one JSON array
(memory stays flat however long the run); only a short summary per call is kept in memory,
for at most :data:`MAX_CALLS` calls (messages of later calls are counted, not shown).  The
page is assembled when the sink closes.

Layout of the embedded data (arrays, not objects: they are the file's size):

* ``endpoints``: ``["10.0.0.1:5061", ...]``;
* ``calls``: ``[call_id, from, to, first_us, last_us, status, reason, messages, transport,
  tls_version, cipher_suite, method]`` (times in microseconds since the epoch, UTC);
* ``messages``: ``[call, ts_us, src, dst, label, status, text, transport, tls_version,
  cipher_suite]``, where ``call`` indexes ``calls``, ``src``/``dst`` index ``endpoints``, and
  ``status`` is 0 for a request.
"""

from __future__ import annotations

import json
import os
import tempfile
from importlib import resources
from typing import TYPE_CHECKING, TextIO

from captagent_tls import __version__
from captagent_tls.message import Endpoint, Message
from captagent_tls.net.addresses import format_endpoint
from captagent_tls.sinks import OutputError, Sink
from captagent_tls.sip.headers import address_of, summarize

if TYPE_CHECKING:
    from captagent_tls.media.reports import MediaEvent

MAX_CALLS = 200_000
SPOOL_BUFFER = 1 << 20
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


MAX_STREAMS_SHOWN = 32  # RTP streams listed per call


class ReportError(OutputError):
    """The report cannot be written; the message is one line naming the file."""


class _Call:
    __slots__ = (
        "index",
        "call_id",
        "from_",
        "to",
        "first_us",
        "last_us",
        "status",
        "reason",
        "messages",
        "transport",
        "tls_version",
        "cipher_suite",
        "method",
        "cseq",
        "provisional",
        "provisional_reason",
        "media",
    )

    def __init__(self, index: int, call_id: str, ts_us: int):
        self.index = index
        self.call_id = call_id
        self.from_ = self.to = ""
        self.first_us = self.last_us = ts_us
        self.status = 0  # the final status of the call's first request (>= 200)
        self.reason = ""
        self.provisional = 0  # the last provisional response to it, while no final one came
        self.provisional_reason = ""
        self.messages = 0
        self.transport = self.tls_version = self.cipher_suite = ""
        self.method = ""  # of the call's first request (the one its status answers)
        self.cseq = -1
        # its RTP streams by SSRC: [source, destination (endpoint indexes, -1 unknown), SSRC,
        # packets, lost, jitter ms (from the RTP headers), RTCP reports about it, the largest
        # fraction lost (%) and the last jitter (timestamp units) they gave]
        self.media: dict[int, list[int | float]] = {}

    def row(self) -> list[object]:
        status, reason = (
            (self.status, self.reason)
            if self.status
            else (self.provisional, self.provisional_reason)
        )
        return [
            self.call_id,
            self.from_,
            self.to,
            self.first_us,
            self.last_us,
            status,
            reason,
            self.messages,
            self.transport,
            self.tls_version,
            self.cipher_suite,
            self.method,
            list(self.media.values()),
        ]


def _json_for_html(text: str) -> str:
    """JSON that can stand inside a <script> element: no '<' can end it or open a comment."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class CallFlowReport(Sink):
    """A sink: SIP messages in, ``path`` written on :meth:`close`."""

    def __init__(self, path: str, max_calls: int = MAX_CALLS):
        self.path = path
        self.max_calls = max_calls
        try:
            self._out: TextIO = open(path, "w", encoding="utf-8")  # noqa: SIM115 - see close
            self._spool = tempfile.TemporaryFile(  # noqa: SIM115 - closed in close()
                "w+",
                encoding="utf-8",
                buffering=SPOOL_BUFFER,
                dir=os.path.dirname(os.path.abspath(path)),
            )
        except OSError as exc:
            raise ReportError(f"report {path}: {exc.strerror or exc}") from None
        self._calls: dict[str, _Call] = {}
        self._endpoints: dict[Endpoint, int] = {}
        self.messages = 0  # in the report
        self.not_shown = 0  # not SIP, without a Call-ID, or of calls past max_calls
        self.size = 0  # bytes written, once closed
        self._first = True
        self._closed = False

    def _endpoint(self, endpoint: Endpoint) -> int:
        index = self._endpoints.get(endpoint)
        if index is None:
            index = self._endpoints[endpoint] = len(self._endpoints)
        return index

    def emit(self, message: Message) -> None:
        call_id = message.call_id
        if not message.is_sip or not call_id:
            self.not_shown += 1
            return
        ts_us = message.ts_ns // 1000
        call = self._calls.get(call_id)
        if call is None:
            if len(self._calls) >= self.max_calls:
                self.not_shown += 1
                return
            call = self._calls[call_id] = _Call(len(self._calls), call_id, ts_us)
        summary = summarize(message.payload)
        call.messages += 1
        call.first_us = min(call.first_us, ts_us)
        call.last_us = max(call.last_us, ts_us)
        if not call.transport:
            call.transport = message.transport
        if not call.tls_version and message.tls_version:
            call.tls_version, call.cipher_suite = message.tls_version, message.cipher_suite
        if not call.from_ and (summary.from_ or summary.to):
            call.from_, call.to = address_of(summary.from_), address_of(summary.to)
        if summary.is_request:
            if not call.method and summary.method != "ACK":
                call.method, call.cseq = summary.method, summary.cseq
        elif summary.status:
            if not call.method:  # the capture began after the request: its answer tells
                call.method, call.cseq = summary.cseq_method, summary.cseq
            if summary.cseq_method == call.method:
                if summary.status >= 200:
                    call.status, call.reason = summary.status, summary.reason
                else:
                    call.provisional, call.provisional_reason = summary.status, summary.reason
        record = [
            call.index,
            ts_us,
            self._endpoint(message.src),
            self._endpoint(message.dst),
            summary.label,
            summary.status,
            message.payload.decode("utf-8", "backslashreplace"),
            message.transport,
            message.tls_version,
            message.cipher_suite,
        ]
        self._spool.write(("" if self._first else ",") + _json_for_html(_dumps(record)) + "\n")
        self._first = False
        self.messages += 1

    def emit_media(self, event: MediaEvent) -> None:
        """A call's streams: the RTP statistics when its media ends, and what the RTCP
        reports of the other side said about each stream."""
        from captagent_tls.media.reports import MediaEnded, RtcpReport
        from captagent_tls.media.rtcp import ReceiverReport, SenderReport

        call = self._calls.get(event.call_id)
        if call is None:
            return
        if isinstance(event, MediaEnded):
            for stream in event.streams:
                stats = stream.stats
                entry = self._stream(call, stats.ssrc)
                entry[0], entry[1] = self._endpoint(stream.src), self._endpoint(stream.dst)
                entry[3], entry[4] = stats.packets, stats.lost
                entry[5] = round(stats.jitter_ms, 2) if stats.clock_rate else -1
        elif isinstance(event, RtcpReport):
            for packet in event.packets:
                if isinstance(packet, SenderReport | ReceiverReport):
                    for block in packet.reports:
                        entry = self._stream(call, block.ssrc)
                        entry[6] = int(entry[6]) + 1
                        entry[7] = max(entry[7], round(block.fraction_lost * 100 / 256, 1))
                        entry[8] = block.jitter

    @staticmethod
    def _stream(call: _Call, ssrc: int) -> list[int | float]:
        entry = call.media.get(ssrc)
        if entry is None:
            if len(call.media) >= MAX_STREAMS_SHOWN:
                return [0] * 9  # (shown nowhere)
            entry = call.media[ssrc] = [-1, -1, ssrc, -1, -1, -1, 0, 0, -1]
        return entry

    @property
    def calls(self) -> int:
        return len(self._calls)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._write()
        except OSError as exc:
            raise ReportError(f"report {self.path}: {exc.strerror or exc}") from None
        finally:
            self._spool.close()
            self._out.close()

    def _write(self) -> None:
        out = self._out
        page = resources.files(__package__)
        template = (page / "callflow.html").read_text(encoding="utf-8")
        style = (page / "callflow.css").read_text(encoding="utf-8")
        script = (page / "callflow.js").read_text(encoding="utf-8")
        head, marker, tail = template.partition("<!--DATA-->")
        if not marker:
            raise ReportError("the report template has no data marker")  # a packaging fault
        endpoints = [format_endpoint(e) for e in self._endpoints]
        meta = {
            "generator": f"captagent-tls {__version__}",
            "calls": len(self._calls),
            "messages": self.messages,
            "not_shown": self.not_shown,
            "max_calls": self.max_calls,
        }
        out.write(head.replace("/*STYLE*/", style))
        out.write(
            f'<script type="application/json" id="meta">{_json_for_html(_dumps(meta))}</script>\n'
        )
        out.write(
            '<script type="application/json" id="endpoints">'
            f"{_json_for_html(_dumps(endpoints))}</script>\n"
        )
        out.write('<script type="application/json" id="calls">[')
        for n, call in enumerate(self._calls.values()):
            out.write(("," if n else "") + _json_for_html(_dumps(call.row())) + "\n")
        out.write("]</script>\n")
        out.write('<script type="application/json" id="messages">[')
        self._spool.seek(0)
        while True:
            chunk = self._spool.read(SPOOL_BUFFER)
            if not chunk:
                break
            out.write(chunk)
        out.write("]</script>\n")
        out.write(tail.replace("/*SCRIPT*/", script))
        out.flush()
        self.size = os.fstat(out.fileno()).st_size

    def summary_line(self) -> str:
        skipped = (
            f"; {self.not_shown} messages not shown (not SIP, no Call-ID, or past "
            f"{self.max_calls} calls)"
            if self.not_shown
            else ""
        )
        return (
            f"report: {self.path}: {self.calls} calls, {self.messages} messages, "
            f"{_size(self.size)}{skipped}"
        )


def _size(size: int) -> str:
    if size >= 1 << 20:
        return f"{size / (1 << 20):.1f} MiB"
    if size >= 1 << 10:
        return f"{size / (1 << 10):.1f} KiB"
    return f"{size} bytes"
