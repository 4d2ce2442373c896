"""Console sink: one header line per message, then the message text.

The console is a terminal more often than not, and the message's bytes come from whoever
sent them: an escape sequence could clear the screen, move the cursor, retitle the window,
and a bare carriage return could overwrite the line with other text.  So every control
character of a message is shown as a visible escape (``\\x1b``), as ``cat -v`` or ``less``
would, whatever the colour setting and whether or not the output is a terminal: C0 controls
(ESC among them) except tab and the line's own ending (LF, or CR LF), a CR that does not end a
line, DEL, the C1 controls (a terminal may take U+009B as CSI), and the Unicode controls of
text direction, which reorder what is shown.  Colour codes come only from the views.  JSON,
``-w``, HEP and the report keep the exact bytes.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, TextIO

from captagent_tls.message import Message
from captagent_tls.net.addresses import format_endpoint
from captagent_tls.sinks import Sink, write_failed

if TYPE_CHECKING:
    from captagent_tls.media.reports import MediaEvent

_UNSAFE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]|\r(?!\n)"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """Text that cannot drive a terminal: its control characters shown as escapes."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape, text)


def format_time(ts_ns: int) -> str:
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + f".{nanos // 1000:06d}"


class ConsoleSink(Sink):
    def __init__(self, out: TextIO, flush_each: bool = False):
        self.out = out
        self.flush_each = flush_each

    def emit(self, message: Message) -> None:
        security = (
            f"{message.tls_version} {message.cipher_suite}"
            if message.tls_version
            else message.transport.upper()
        )
        if message.transport == "wss":
            security = f"WSS {security}"
        kind = "" if message.is_sip else f" [{len(message.payload)} bytes, not SIP]"
        text = printable(message.payload.decode("utf-8", "backslashreplace"))
        if not text.endswith("\n"):
            text += "\n"
        try:
            self.out.write(
                f"{format_time(message.ts_ns)} UTC {format_endpoint(message.src)} -> "
                f"{format_endpoint(message.dst)} {security}{kind}\n{text}\n"
            )
            if self.flush_each:
                self.out.flush()
        except BrokenPipeError:
            raise  # the reader went away (| head): not an error
        except OSError as exc:
            raise write_failed(self.out, exc) from None

    def emit_media(self, event: MediaEvent) -> None:
        """An RTCP report: a header line as a message's, then its packets in one line; a call
        whose media ended: a line per RTP stream."""
        from captagent_tls.media.reports import MediaEnded, RtcpReport
        from captagent_tls.media.text import rtcp_line, stream_line

        if isinstance(event, RtcpReport):
            kind = "SRTCP" if event.srtcp else "RTCP"
            text = (
                f"{format_time(event.ts_ns)} UTC {format_endpoint(event.src)} -> "
                f"{format_endpoint(event.dst)} {kind} call {event.call_id}\n"
                f"{rtcp_line(event.packets)}\n\n"
            )
        elif isinstance(event, MediaEnded):
            when = format_time(event.ts_ns)
            text = f"{when} UTC media of call {event.call_id} ended ({event.reason})\n"
            text += "".join(stream_line(s.src, s.dst, s.stats) + "\n" for s in event.streams)
            text += "\n"
        else:
            return  # (decrypted RTP is for --media-pcap only)
        try:
            self.out.write(printable(text))
            if self.flush_each:
                self.out.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise write_failed(self.out, exc) from None

    def close(self) -> None:
        try:
            self.out.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise write_failed(self.out, exc) from None
