"""JSON lines sink: one object per message.

Fields: ts (seconds, microsecond precision, as HEP carries it), src_ip, src_port, dst_ip,
dst_port, transport ("udp", "tcp", "tls", "ws", "wss"), direction, tls_version, cipher_suite,
kind ("sip" or "raw"), call_id, and payload, or payload_b64 when the bytes are not UTF-8.

Media too: an RTCP report of a call is ``kind: "rtcp"`` with its addresses, ``call_id``,
``srtcp`` (it came protected) and ``rtcp``, the report as HEP type 5 carries it (heplify's
fields); when a call's media ends, ``kind: "media"`` gives ``call_id``, ``reason`` ("bye",
"idle", "evicted") and each RTP stream's statistics in ``streams``.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, TextIO

from captagent_tls.message import Endpoint, Message
from captagent_tls.net.addresses import ip_text
from captagent_tls.sinks import Sink, write_failed

if TYPE_CHECKING:
    from captagent_tls.media.reports import MediaEvent
    from captagent_tls.media.rtp import RtpStats

# ASCII-only output: no line separators (U+2028) or encodings to trip over in consumers
_string = json.encoder.encode_basestring_ascii
FIXED_FIELDS_KEPT = 4096  # flows' shared fields remembered (then forgotten all at once)


class JsonLinesSink(Sink):
    """The line is put together by hand: the fixed fields need no escaping, and this runs
    once per message."""

    def __init__(self, out: TextIO, flush_each: bool = False):
        self.out = out
        self.flush_each = flush_each
        # the fields a flow's messages share, written once per flow and direction
        self._fixed: dict[tuple[object, ...], str] = {}

    def _fixed_fields(self, message: Message) -> str:
        key = (
            message.src,
            message.dst,
            message.transport,
            message.from_client,
            message.tls_version,
            message.cipher_suite,
            message.is_sip,
        )
        fixed = self._fixed.get(key)
        if fixed is None:
            if len(self._fixed) >= FIXED_FIELDS_KEPT:
                self._fixed.clear()
            (src_addr, src_port), (dst_addr, dst_port) = message.src, message.dst
            version = _string(message.tls_version) if message.tls_version else "null"
            suite = _string(message.cipher_suite) if message.cipher_suite else "null"
            fixed = self._fixed[key] = (
                f'"src_ip": "{ip_text(src_addr)}", "src_port": {src_port}, '
                f'"dst_ip": "{ip_text(dst_addr)}", "dst_port": {dst_port}, '
                f'"transport": "{message.transport}", '
                f'"direction": "{"c2s" if message.from_client else "s2c"}", '
                f'"tls_version": {version}, "cipher_suite": {suite}, '
                f'"kind": "{"sip" if message.is_sip else "raw"}", '
            )
        return fixed

    def emit(self, message: Message) -> None:
        seconds, nanos = divmod(message.ts_ns, 1_000_000_000)
        try:
            payload = '"payload": ' + _string(message.payload.decode("utf-8"))
        except UnicodeDecodeError:
            payload = '"payload_b64": "' + base64.b64encode(message.payload).decode("ascii") + '"'
        call_id = "null" if message.call_id is None else _string(message.call_id)
        try:
            self.out.write(
                f'{{"ts": {seconds}.{nanos // 1000:06d}, {self._fixed_fields(message)}'
                f'"call_id": {call_id}, {payload}}}\n'
            )
            if self.flush_each:
                self.out.flush()
        except BrokenPipeError:
            raise  # the reader went away (| head): not an error
        except OSError as exc:
            raise write_failed(self.out, exc) from None

    def emit_media(self, event: MediaEvent) -> None:
        from captagent_tls.media.reports import MediaEnded, RtcpReport

        seconds, nanos = divmod(event.ts_ns, 1_000_000_000)
        if isinstance(event, RtcpReport):
            line = (
                f'{{"ts": {seconds}.{nanos // 1000:06d}, {_addresses(event.src, event.dst)}, '
                f'"transport": "udp", "kind": "rtcp", "call_id": {_string(event.call_id)}, '
                f'"srtcp": {"true" if event.srtcp else "false"}, "rtcp": {event.json}}}\n'
            )
        elif isinstance(event, MediaEnded):
            streams = ", ".join(_stream(s.src, s.dst, s.stats) for s in event.streams)
            line = (
                f'{{"ts": {seconds}.{nanos // 1000:06d}, "kind": "media", '
                f'"call_id": {_string(event.call_id)}, "reason": "{event.reason}", '
                f'"streams": [{streams}]}}\n'
            )
        else:
            return  # (decrypted RTP is for --media-pcap only)
        try:
            self.out.write(line)
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


def _addresses(src: Endpoint, dst: Endpoint) -> str:
    return (
        f'"src_ip": "{ip_text(src[0])}", "src_port": {src[1]}, '
        f'"dst_ip": "{ip_text(dst[0])}", "dst_port": {dst[1]}'
    )


def _stream(src: Endpoint, dst: Endpoint, stats: RtpStats) -> str:
    return (
        f"{{{_addresses(src, dst)}, "
        f'"ssrc": {stats.ssrc}, "packets": {stats.packets}, "expected": {stats.expected}, '
        f'"lost": {stats.lost}, "gaps": {stats.gaps}, "duplicates": {stats.duplicates}, '
        f'"jitter": {stats.jitter:.3f}, "jitter_ms": {stats.jitter_ms:.3f}, '
        f'"clock_rate": {stats.clock_rate}}}'
    )
