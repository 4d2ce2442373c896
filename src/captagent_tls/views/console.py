"""The console views: the full view in colour, and one line per message (``--brief``).

The colour view is the plain console view (:mod:`captagent_tls.sinks.console`) with colour
laid over its text, so the two can never drift apart: the header line takes the colour of
its direction (client to server, server to client) with the TLS details dim, and the start
line of a SIP message the colour of its kind (request, 1xx, 2xx, 3xx-6xx).

Control characters that came off the wire are shown escaped, as in the plain view
(:func:`captagent_tls.sinks.console.printable`): colour codes come only from here.
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, TextIO

from captagent_tls.message import Message

if TYPE_CHECKING:
    from captagent_tls.media.reports import MediaEvent
from captagent_tls.net.addresses import format_endpoint
from captagent_tls.sinks import Sink
from captagent_tls.sinks.console import ConsoleSink, printable
from captagent_tls.sip.headers import summarize
from captagent_tls.views.colour import (
    DIM,
    NOT_SIP,
    RESET,
    direction_colour,
    paint,
    status_colour,
)


def security_of(message: Message) -> str:
    """How the message travelled: TLS version and suite, or the transport."""
    tls = f"{message.tls_version} {message.cipher_suite}" if message.tls_version else ""
    if message.transport in ("ws", "wss"):
        return f"{message.transport.upper()} {tls}".rstrip()
    return tls or message.transport.upper()


def _start_line_status(text: str) -> int:
    """0 for a request; the status code of a response."""
    if text.startswith("SIP/2.0 ") and text[8:11].isdigit():
        return int(text[8:11])
    return 0


class ColourConsoleSink(Sink):
    """The plain console view, coloured, with control characters escaped."""

    def __init__(self, out: TextIO, flush_each: bool = False):
        self.out = out
        self.flush_each = flush_each
        self._plain_text = io.StringIO()
        self._plain = ConsoleSink(self._plain_text)

    def emit(self, message: Message) -> None:
        plain = self._plain_text
        self._plain.emit(message)
        text = plain.getvalue()
        plain.seek(0)
        plain.truncate()
        self.out.write(colourize(message, text))  # (the plain view escaped the message)
        if self.flush_each:
            self.out.flush()

    def emit_media(self, event: MediaEvent) -> None:
        plain = self._plain_text
        self._plain.emit_media(event)
        text = plain.getvalue()
        plain.seek(0)
        plain.truncate()
        if not text:
            return  # (decrypted RTP is for --media-pcap only)
        header, _, rest = text.partition("\n")
        self.out.write(f"{paint(NOT_SIP, header)}\n{rest}")
        if self.flush_each:
            self.out.flush()

    def close(self) -> None:
        self.out.flush()


def colourize(message: Message, text: str) -> str:
    """Colour one message of the plain console view (header line, then the message)."""
    header, _, body = text.partition("\n")
    direction = direction_colour(message.from_client)
    after_destination = f" -> {printable(format_endpoint(message.dst))} "
    cut = header.find(after_destination)
    if cut >= 0:
        cut += len(after_destination)
        header = paint(direction, header[: cut - 1]) + " " + paint(DIM, header[cut:])
    else:
        header = paint(direction, header)
    if message.is_sip:
        line_end = body.find("\n")
        first = body if line_end < 0 else body[:line_end]
        cr = "\r" if first.endswith("\r") else ""
        first = first[: len(first) - len(cr)]
        body = (
            paint(status_colour(_start_line_status(first)), first)
            + cr
            + (body[line_end:] if line_end >= 0 else "")
        )
    return f"{header}\n{body}"


def _time_of_day(ts_ns: int) -> str:
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) + f".{nanos // 1000:06d}"


class BriefSink(Sink):
    """One line per message, like sngrep's list: UTC time of day, source -> destination,
    method or status, Call-ID, then the TLS version and suite (or the transport)."""

    def __init__(self, out: TextIO, flush_each: bool = False, colour: bool = False):
        self.out = out
        self.flush_each = flush_each
        self.colour = colour

    def line(self, message: Message) -> str:
        src = format_endpoint(message.src).ljust(21)
        dst = format_endpoint(message.dst).ljust(21)
        if message.is_sip:
            summary = summarize(message.payload)
            label = summary.label or "SIP"
            status = summary.status
        else:
            label = f"[{len(message.payload)} bytes, not SIP]"
            status = -1
        call_id = message.call_id or "-"
        security = security_of(message)
        when = _time_of_day(message.ts_ns)
        if not self.colour:
            return printable(f"{when} {src} -> {dst} {label:<20} {call_id} {security}") + "\n"
        direction = direction_colour(message.from_client)
        label_colour = NOT_SIP if status < 0 else status_colour(status)
        return (
            f"{when} {direction}{printable(src)} -> {printable(dst)}{RESET} "
            f"{label_colour}{printable(label.ljust(20))}{RESET} {printable(call_id)} "
            f"{DIM}{security}{RESET}\n"
        )

    def emit(self, message: Message) -> None:
        self.out.write(self.line(message))
        if self.flush_each:
            self.out.flush()

    def emit_media(self, event: MediaEvent) -> None:
        """An RTCP report as one line (its packet types where a message has its method); a
        call whose media ended as one line per RTP stream."""
        from captagent_tls.media.reports import MediaEnded, RtcpReport
        from captagent_tls.media.text import rtcp_label, stream_line

        when = _time_of_day(event.ts_ns)
        if isinstance(event, RtcpReport):
            src = format_endpoint(event.src).ljust(21)
            dst = format_endpoint(event.dst).ljust(21)
            label = rtcp_label(event.packets)
            kind = "SRTCP" if event.srtcp else "RTCP"
            line = f"{when} {src} -> {dst} {label:<20} {event.call_id} {kind}"
            lines = [printable(line)]
        elif isinstance(event, MediaEnded):
            lines = [
                printable(f"{when} {stream_line(s.src, s.dst, s.stats)} {event.call_id}")
                for s in event.streams
            ]
        else:
            return  # (decrypted RTP is for --media-pcap only)
        text = "".join(
            (f"{NOT_SIP}{line}{RESET}" if self.colour else line) + "\n" for line in lines
        )
        self.out.write(text)
        if self.flush_each:
            self.out.flush()

    def close(self) -> None:
        self.out.flush()


def console_view(
    out: TextIO, flush_each: bool, colour: bool, brief: bool
) -> ConsoleSink | ColourConsoleSink | BriefSink:
    """The console sink the options ask for; without colour or --brief, the plain one."""
    if brief:
        return BriefSink(out, flush_each, colour)
    if colour:
        return ColourConsoleSink(out, flush_each)
    return ConsoleSink(out, flush_each)
