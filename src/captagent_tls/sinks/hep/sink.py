"""The HEP sink: each SIP message encoded once and handed to every collector.

heplify-server silently drops packets without the protocol type chunk (0x000b) and SIP
payloads of 32 bytes or less, so we never send those: what we hold back is counted instead,
once per message however many collectors there are.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from captagent_tls.counters import Counters
from captagent_tls.message import Message

if TYPE_CHECKING:
    from captagent_tls.media.reports import MediaEvent
from captagent_tls.sinks import Sink
from captagent_tls.sinks.hep.addresses import CollectorAddressError, HepConfigError, parse_collector
from captagent_tls.sinks.hep.collector import Collector
from captagent_tls.sinks.hep.encoder import MIN_SIP_PAYLOAD, HepEncoder, HepOptions, HepTooLarge
from captagent_tls.sinks.hep.queue import QueueLimits
from captagent_tls.sinks.hep.stream import RetryPolicy, StreamCollector
from captagent_tls.sinks.hep.tls_context import TlsOptions
from captagent_tls.sinks.hep.udp import UdpCollector


def open_collector(
    address: str,
    *,
    limits: QueueLimits | None = None,
    tls: TlsOptions | None = None,
    retry: RetryPolicy | None = None,
    start: bool = True,
) -> Collector:
    """A collector for ``[udp://|tcp://|tls://]HOST:PORT``.

    Raises :class:`CollectorAddressError` (a :class:`HepConfigError`) for a malformed or
    unresolvable address and :class:`HepConfigError` for unusable TLS files, before any thread
    starts.  With ``start=False`` nothing is sent until :meth:`Collector.start`.
    """
    scheme, host, port = parse_collector(address)
    collector: Collector
    if scheme == "udp":
        collector = UdpCollector(host, port, text=address, limits=limits)
    else:
        collector = StreamCollector(
            scheme, host, port, limits=limits, tls=tls, retry=retry, text=address
        )
    if start:
        collector.start()
    return collector


@dataclass
class HepSinkStats:
    """What the sink itself did, once per message whatever the number of collectors."""

    messages: int = 0  # messages given to emit()
    packets: int = 0  # encoded and handed to every collector
    skipped_not_sip: int = 0
    skipped_short: int = 0
    skipped_too_large: int = 0
    rtcp_packets: int = 0  # RTCP reports encoded as HEP type 5 and handed to every collector


class HepSink(Sink):
    """Encodes each SIP message once as HEPv3 and hands the packet to every collector.

    ``collectors`` are ``[udp://|tcp://|tls://]HOST:PORT`` strings.  Every address is checked
    and resolved before any connection starts: :class:`CollectorAddressError` (or
    :class:`HepConfigError` for a TLS file) with a one-line message otherwise.  ``emit`` never
    waits for the network; ``close`` delivers what the queues hold within ``close_timeout``
    seconds, all collectors in parallel.
    """

    def __init__(
        self,
        collectors: Sequence[str],
        options: HepOptions | None = None,
        *,
        limits: QueueLimits | None = None,
        tls: TlsOptions | None = None,
        retry: RetryPolicy | None = None,
        close_timeout: float = 5.0,
    ):
        if not collectors:
            raise HepConfigError("no HEP collector given")
        self.options = options or HepOptions()
        self.encoder = HepEncoder(self.options)
        self.close_timeout = close_timeout
        self.stats = HepSinkStats()
        built: list[Collector] = []
        try:
            for text in collectors:
                collector = open_collector(text, limits=limits, tls=tls, retry=retry, start=False)
                built.append(collector)
                if any(c.address == collector.address for c in built[:-1]):
                    raise CollectorAddressError(
                        f"bad HEP collector {text!r}: {collector.address} is given twice"
                    )
        except HepConfigError:
            for collector in built:
                collector.close(0)
            raise
        self.collectors: tuple[Collector, ...] = tuple(built)
        self._offers = tuple(c.queue.offer for c in built)
        self._closed = False
        for collector in built:
            collector.start()

    def emit(self, message: Message) -> None:
        stats = self.stats
        stats.messages += 1
        if not message.is_sip:
            stats.skipped_not_sip += 1
            return
        if len(message.payload) < MIN_SIP_PAYLOAD:
            stats.skipped_short += 1
            return
        try:
            packet = self.encoder.encode(message)
        except HepTooLarge:
            stats.skipped_too_large += 1
            return
        stats.packets += 1
        for offer in self._offers:
            offer(packet)

    def emit_media(self, event: MediaEvent) -> None:
        """An RTCP report goes out as HEP type 5 (RTP statistics have no HEP form here)."""
        from captagent_tls.media.reports import RtcpReport

        if not isinstance(event, RtcpReport):
            return
        try:
            packet = self.encoder.encode_rtcp(event)
        except HepTooLarge:
            self.stats.skipped_too_large += 1
            return
        self.stats.rtcp_packets += 1
        for offer in self._offers:
            offer(packet)

    def close(self, timeout: float | None = None) -> None:
        """Flush and close every collector within ``timeout`` (default ``close_timeout``)."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + (self.close_timeout if timeout is None else timeout)
        for collector in self.collectors:
            collector.begin_close(deadline)
        for collector in self.collectors:
            collector.wait_closed(deadline)

    def add_counters(self, counters: Counters) -> None:
        s = self.stats
        counters.set("hep_packets", s.packets, "made")
        counters.set("hep_packets", s.rtcp_packets, "rtcp_made")
        counters.set("hep_packets", s.skipped_not_sip, "not_sip")
        counters.set("hep_packets", s.skipped_short, "too_short")
        counters.set("hep_packets", s.skipped_too_large, "too_large")
        for collector in self.collectors:
            c = collector.stats
            label = collector.address
            counters.set("hep_sent", c.sent, label)
            counters.set("hep_dropped", c.dropped + c.dropped_at_shutdown, label)
            counters.set("hep_send_errors", c.send_errors, label)
            counters.set("hep_reconnects", c.reconnects, label)
            counters.set("hep_queued", c.queued, label)

    def summary_lines(self, verbose: bool = False) -> list[str]:
        """The end-of-run summary: one line for the sink, one per collector (figures that
        are zero only when ``verbose``).  (Also called with the workers' merged figures.)"""
        s = self.stats
        skipped = [
            f"{count} {why}"
            for count, why in (
                (s.skipped_not_sip, "not SIP"),
                (s.skipped_short, "too short"),
                (s.skipped_too_large, "too large"),
            )
            if verbose or count
        ]
        rtcp = f" (and {s.rtcp_packets} RTCP reports)" if verbose or s.rtcp_packets else ""
        lines = [
            f"HEP: {s.packets} packets per collector{rtcp}"
            + (f"; not sent: {', '.join(skipped)}" if skipped else "")
        ]
        for collector in self.collectors:
            c = collector.stats
            figures: list[tuple[int, str]] = (
                [(c.send_errors, "send errors")]
                if collector.scheme == "udp"
                else [
                    (c.queued, "still queued"),
                    (c.dropped, "dropped (queue full)"),
                    (c.dropped_at_shutdown, "dropped at shutdown"),
                    (c.resent, "resent"),
                    (c.reconnects, "reconnects"),
                    (c.connect_failures, "failed connection attempts"),
                    (c.send_errors, "broken connections"),
                ]
            )
            line = f"HEP {collector.address}: {c.sent} sent" + "".join(
                f", {count} {what}" for count, what in figures if verbose or count
            )
            if c.last_error:
                line += f"; last error: {c.last_error}"
            lines.append(line)
        return lines

    def shortfall(self) -> str | None:
        """The collectors that did not get every packet: dropped (queue full, or still
        queued at shutdown), or not sent (a UDP send error).  (Also called with the
        workers' merged figures.)"""
        short = []
        for collector in self.collectors:
            c = collector.stats
            lost = (
                c.dropped
                + c.dropped_at_shutdown
                + (c.send_errors if collector.scheme == "udp" else 0)
            )
            if lost:
                why = f": {c.last_error}" if c.last_error else ""
                made = self.stats.packets + self.stats.rtcp_packets
                short.append(
                    f"HEP collector {collector.address} did not get {lost} of {made} packets{why}"
                )
        return "; ".join(short) or None
