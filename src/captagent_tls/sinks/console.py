"""Console sink: one header line per message, then the message text."""

from __future__ import annotations

import time
from typing import TextIO

from captagent_tls.message import Message
from captagent_tls.net.addresses import format_endpoint
from captagent_tls.sinks import Sink, write_failed


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
        text = message.payload.decode("utf-8", "backslashreplace")
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

    def close(self) -> None:
        try:
            self.out.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise write_failed(self.out, exc) from None
