"""One snapshot of every counter the agent keeps.

The pipeline, the outputs and the live capture each add what they count to a ``Counters``
(``Pipeline.counters()``, ``Sink.add_counters()``); the stats summary, ``/metrics`` and the
live status line all read that one snapshot, so a counter is named and explained once.  With
worker processes, each worker's snapshot is sent to the parent and the totals are their sum.

Names are Prometheus metric names without the ``captagent_tls_`` prefix; a counter may carry
labels (``tls_sessions{outcome="full"}``).  Every name is in ``CATALOGUE`` with its kind, its
labels and one line of explanation.
"""

from __future__ import annotations

from typing import NamedTuple


class Spec(NamedTuple):
    kind: str  # "counter" (only grows) or "gauge" (goes up and down)
    doc: str
    labels: tuple[str, ...] = ()


C, G = "counter", "gauge"
CATALOGUE: dict[str, Spec] = {
    # capture
    "packets": Spec(C, "Packets read from the capture"),
    "packets_skipped": Spec(C, "Packets that carried nothing to follow, by why", ("reason",)),
    "kernel_received_packets": Spec(C, "Packets the kernel received"),
    "kernel_dropped_packets": Spec(C, "Packets the kernel dropped (buffer full)"),
    "interface_dropped_packets": Spec(C, "Packets the interface dropped"),
    "capture_reopens": Spec(C, "Times the capture was opened again after its interface was lost"),
    "capture_blind_seconds": Spec(C, "Seconds without capture: the interface was down or gone"),
    "ip_fragments": Spec(C, "IP fragments, by what became of them", ("outcome",)),
    # TCP
    "tcp_segments": Spec(C, "TCP segments"),
    "flows": Spec(C, "TCP flows seen"),
    "active_flows": Spec(G, "TCP flows open now"),
    "flow_evictions": Spec(C, "Flows evicted by the flow cap"),
    "flow_timeouts": Spec(C, "Flows closed after the idle timeout"),
    "tcp_out_of_order": Spec(C, "TCP segments that arrived ahead of the stream"),
    "tcp_duplicates": Spec(C, "TCP segments the stream already had"),
    "tcp_gaps": Spec(C, "Holes in TCP streams the capture missed"),
    "tcp_gap_bytes": Spec(C, "Bytes in those holes"),
    "tcp_buffer_overflows": Spec(
        C, "Times out-of-order bytes outgrew --max-flow-buffer (the hole became a gap)"
    ),
    # TLS
    "tls_connections": Spec(C, "TCP flows that carry TLS"),
    "non_tls_flows": Spec(C, "TCP flows that do not carry TLS"),
    "tls_sessions": Spec(
        C,
        "TLS sessions, each in exactly one outcome: full, resumed, "
        "incomplete, or why it could not be decrypted",
        ("outcome",),
    ),
    "tls_records": Spec(C, "TLS records by outcome", ("outcome",)),
    "tls_held_bytes": Spec(G, "Bytes of records waiting for keys"),
    "tls_waiting_connections": Spec(G, "TLS connections with records waiting for keys"),
    "tls_finished": Spec(C, "Finished messages, verified or not", ("outcome",)),
    "tls_events": Spec(C, "Other TLS events by kind", ("kind",)),
    "session_cache_evictions": Spec(C, "Cached TLS sessions evicted by the cap"),
    "internal_errors": Spec(C, "Flows dropped after an unexpected exception"),
    # SIP and WebSocket
    "sip_messages": Spec(C, "SIP messages framed"),
    "sip_messages_unencrypted": Spec(C, "SIP messages over UDP or plain TCP"),
    "raw_chunks": Spec(C, "Decrypted application data that is not SIP, passed on as raw"),
    "raw_bytes": Spec(C, "Bytes of that data"),
    "plain_other_bytes": Spec(C, "Unencrypted TCP bytes that are not SIP (not passed on)"),
    "sip_messages_dropped": Spec(C, "SIP messages dropped by a size bound", ("bound",)),
    "sip_dropped_bytes": Spec(C, "Bytes of the SIP messages dropped by a size bound"),
    "sip_held_bytes": Spec(G, "Bytes of incomplete SIP messages held, all flows"),
    "sip_bound_bytes": Spec(
        G, "The SIP size bounds: one message, all flows' incomplete messages together", ("bound",)
    ),
    "websocket": Spec(C, "SIP over WebSocket, by what was seen", ("kind",)),
    # media (RTP, RTCP and SRTCP of the calls whose SDP was seen)
    "media_rtcp": Spec(C, "RTCP and SRTCP datagrams by what became of them", ("outcome",)),
    "media_rtp_streams": Spec(C, "RTP streams (SSRCs) by what became of them", ("outcome",)),
    "media_calls": Spec(C, "Calls with media, by what happened to them", ("event",)),
    "media_dtls": Spec(C, "DTLS on media ports (DTLS-SRTP keys)", ("kind",)),
    "media_events": Spec(C, "Other media events by kind", ("kind",)),
    "media_calls_active": Spec(G, "Calls whose media is followed now"),
    "media_rtp_streams_active": Spec(G, "RTP streams followed now"),
    "media_waiting": Spec(G, "RTCP and DTLS datagrams waiting for their call's SIP"),
    # keys
    "key_log_secrets": Spec(G, "Key-log secrets held"),
    "key_log_max_secrets": Spec(G, "Key-log secrets held at most (the oldest go first)"),
    "key_log_evictions": Spec(C, "Key-log secrets evicted by the bound (oldest first)"),
    "key_log_lines": Spec(C, "Key-log lines from followed files and listeners", ("outcome",)),
    "key_log_connections_closed": Spec(
        C, "Key-log listener connections closed by the agent", ("reason",)
    ),
    # HEP
    "hep_packets": Spec(C, "HEP packets made per collector, or not made and why", ("outcome",)),
    "hep_sent": Spec(C, "HEP packets sent", ("collector",)),
    "hep_dropped": Spec(C, "HEP packets dropped: queue full or shutdown", ("collector",)),
    "hep_send_errors": Spec(C, "HEP send errors", ("collector",)),
    "hep_reconnects": Spec(C, "HEP connections re-established", ("collector",)),
    "hep_queued": Spec(G, "HEP packets waiting to be sent", ("collector",)),
    # worker processes (--workers)
    "workers": Spec(G, "Worker processes running"),
    "worker_restarts": Spec(C, "Worker processes that died and were started again"),
    "worker_packets": Spec(C, "Packets read, by worker", ("worker",)),
    "worker_sip_messages": Spec(C, "SIP messages framed, by worker", ("worker",)),
    "worker_kernel_dropped_packets": Spec(C, "Packets the kernel dropped, by worker", ("worker",)),
    "worker_cpu_seconds": Spec(C, "CPU time (user and system) of each worker process", ("worker",)),
}

Labels = tuple[str, ...]


class Counters:
    """Values by name and label values.  Missing values read as 0."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[str, dict[Labels, float]] = {}

    def set(self, name: str, value: float, *labels: str) -> None:
        spec = CATALOGUE[name]
        if len(labels) != len(spec.labels):
            raise ValueError(f"{name} takes labels {spec.labels}, not {labels}")
        self.values.setdefault(name, {})[labels] = value

    def get(self, name: str, *labels: str) -> float:
        return self.values.get(name, {}).get(labels, 0)

    def __getitem__(self, name: str) -> int:
        return int(self.get(name))

    def labelled(self, name: str) -> dict[Labels, float]:
        return dict(self.values.get(name, {}))

    def total(self, name: str) -> float:
        return sum(self.values.get(name, {}).values())

    def add(self, other: Counters) -> None:
        """Add another snapshot (another worker's) to this one."""
        for name, values in other.values.items():
            mine = self.values.setdefault(name, {})
            for labels, value in values.items():
                mine[labels] = mine.get(labels, 0) + value

    def __getstate__(self) -> dict[str, dict[Labels, float]]:
        return self.values

    def __setstate__(self, values: dict[str, dict[Labels, float]]) -> None:
        self.values = values
