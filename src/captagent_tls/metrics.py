"""Prometheus metrics (``--metrics HOST:PORT``), read from the stats at scrape time.

prometheus_client serves the text format from its own thread; the collector only reads
counters the capture loop keeps anyway, so the hot path pays nothing for metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from captagent_tls.capture.live import KernelStats
from captagent_tls.net.addresses import split_host_port
from captagent_tls.pipeline import Pipeline

PREFIX = "captagent_tls"


class AgentCollector(Collector):
    def __init__(self, pipeline: Pipeline, kernel: Callable[[], KernelStats | None],
                 collectors: Callable[[], list[Any]]):
        self.pipeline = pipeline
        self.kernel = kernel
        self.collectors = collectors

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        pipeline = self.pipeline
        tcp, tls, stats = pipeline.tcp.stats, pipeline.tls.stats, pipeline.stats

        def counter(name: str, doc: str, value: float, labels: dict[str, str] | None = None
                    ) -> CounterMetricFamily:
            family = CounterMetricFamily(f"{PREFIX}_{name}", doc,
                                         labels=list(labels) if labels else None)
            family.add_metric(list(labels.values()) if labels else [], value)
            return family

        yield counter("packets", "Packets read from the capture", stats.frames)
        kernel = self.kernel()
        if kernel is not None:
            yield counter("kernel_received_packets", "Packets the kernel received",
                          kernel.received)
            yield counter("kernel_dropped_packets", "Packets the kernel dropped (buffer full)",
                          kernel.dropped)
            yield counter("interface_dropped_packets", "Packets the interface dropped",
                          kernel.interface_dropped)
        yield counter("flows", "TCP flows seen", tcp.flows)
        active = GaugeMetricFamily(f"{PREFIX}_active_flows", "TCP flows open now")
        active.add_metric([], pipeline.tcp.active_flows)
        yield active
        yield counter("flow_evictions", "Flows evicted by the flow cap", tcp.evictions)
        yield counter("flow_timeouts", "Flows closed after the idle timeout", tcp.timeouts)
        yield counter("session_cache_evictions", "Cached TLS sessions evicted by the cap",
                      pipeline.tls.sessions.evictions)
        yield counter("tcp_gaps", "Holes in TCP streams the capture missed", tcp.gaps)

        sessions = CounterMetricFamily(f"{PREFIX}_tls_sessions", "TLS sessions by outcome",
                                       labels=["outcome"])
        sessions.add_metric(["full"], tls.sessions_full)
        sessions.add_metric(["resumed"], tls.sessions_resumed)
        for reason, count in sorted(tls.undecryptable.items()):
            sessions.add_metric([reason], count)
        yield sessions
        records = CounterMetricFamily(f"{PREFIX}_tls_records", "TLS records by outcome",
                                      labels=["outcome"])
        records.add_metric(["decrypted"], tls.records_decrypted)
        records.add_metric(["failed_authentication"], tls.records_failed)
        records.add_metric(["no_keys"], tls.records_undecrypted)
        records.add_metric(["expired_waiting_for_keys"], tls.records_expired)
        yield records
        held = GaugeMetricFamily(f"{PREFIX}_tls_held_bytes", "Bytes of records waiting for keys")
        held.add_metric([], pipeline.tls.held_bytes)
        yield held
        yield counter("tls_finished_verified", "Finished messages that verified",
                      tls.finished_verified)
        yield counter("tls_finished_failed", "Finished messages that did not verify "
                      "(handshake messages missing from the capture)", tls.finished_failed)
        events = CounterMetricFamily(f"{PREFIX}_tls_events", "Other TLS events by kind",
                                     labels=["kind"])
        for kind in ("alerts", "key_updates", "early_data_records", "early_data_skipped",
                     "resyncs", "framing_errors", "handshake_errors"):
            events.add_metric([kind], getattr(tls, kind))
        yield events
        yield counter("tcp_buffer_overflows", "Times out-of-order bytes outgrew "
                      "--max-flow-buffer (the hole became a gap)", tcp.buffer_overflows)
        yield counter("sip_messages", "SIP messages framed", stats.sip_messages)
        yield counter("sip_messages_unencrypted", "SIP messages over UDP or plain TCP",
                      stats.plain_sip_messages)
        sip = pipeline.sip_budget
        dropped = CounterMetricFamily(f"{PREFIX}_sip_messages_dropped", "SIP messages dropped "
                                      "by a size bound", labels=["bound"])
        dropped.add_metric(["message_size"], sip.oversized_messages)
        dropped.add_metric(["all_flows_held"], sip.over_budget_messages)
        yield dropped
        yield counter("sip_dropped_bytes", "Bytes of the SIP messages dropped by a size bound",
                      sip.dropped_bytes)
        sip_held = GaugeMetricFamily(f"{PREFIX}_sip_held_bytes",
                                     "Bytes of incomplete SIP messages held, all flows")
        sip_held.add_metric([], sip.held)
        yield sip_held

        keys = pipeline.tls.keys
        sources = keys.source_totals()
        secrets = GaugeMetricFamily(f"{PREFIX}_key_log_secrets", "Key-log secrets held")
        secrets.add_metric([], keys.entries)
        yield secrets
        yield counter("key_log_evictions", "Key-log secrets evicted by the bound (oldest first)",
                      keys.evictions)
        lines = CounterMetricFamily(f"{PREFIX}_key_log_lines", "Key-log lines from followed "
                                    "files and listeners", labels=["outcome"])
        lines.add_metric(["added"], sources.lines_added)
        lines.add_metric(["malformed"], sources.malformed_lines)
        yield lines
        closed = CounterMetricFamily(f"{PREFIX}_key_log_connections_closed", "Key-log listener "
                                     "connections closed by the agent", labels=["reason"])
        closed.add_metric(["make_room"], sources.connections_evicted)
        closed.add_metric(["idle"], sources.connections_idle)
        yield closed

        hep = {name: CounterMetricFamily(f"{PREFIX}_hep_{name}", doc, labels=["collector"])
               for name, doc in (("sent", "HEP packets sent"),
                                 ("dropped", "HEP packets dropped: queue full or shutdown"),
                                 ("send_errors", "HEP send errors"),
                                 ("reconnects", "HEP connections re-established"))}
        queued = GaugeMetricFamily(f"{PREFIX}_hep_queued", "HEP packets waiting to be sent",
                                   labels=["collector"])
        for collector in self.collectors():
            s = collector.stats
            label = [collector.address]
            hep["sent"].add_metric(label, s.sent)
            hep["dropped"].add_metric(label, getattr(s, "dropped", 0)
                                      + getattr(s, "dropped_at_shutdown", 0))
            hep["send_errors"].add_metric(label, s.send_errors)
            hep["reconnects"].add_metric(label, getattr(s, "reconnects", 0))
            queued.add_metric(label, getattr(s, "queued", 0))
        yield from hep.values()
        yield queued


def serve_metrics(address: str, collector: AgentCollector) -> None:
    """Start the HTTP endpoint on HOST:PORT (a thread of prometheus_client's)."""
    from prometheus_client import start_http_server

    try:
        host, port = split_host_port(address)
    except ValueError as exc:
        raise ValueError(f"bad --metrics address {address!r}: {exc}") from None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    start_http_server(port, addr=host, registry=registry)
