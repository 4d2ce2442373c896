"""What the user reads on stderr: problems (once each) and the final stats summary."""

from __future__ import annotations

from typing import TextIO

from captagent_tls.capture.live import KernelStats
from captagent_tls.pipeline import Pipeline
from captagent_tls.sinks import Sink
from captagent_tls.sinks.hep import HepSink
from captagent_tls.tls.events import TlsProblem


class ProblemReporter:
    """Prints each distinct problem once (per kind and server), however many flows hit it."""

    def __init__(self, out: TextIO):
        self.out = out
        self._seen: set[tuple[str, str]] = set()

    def report(self, problem: TlsProblem) -> None:
        key = (problem.kind, problem.server)
        if key in self._seen:
            return
        self._seen.add(key)
        print(f"captagent-tls: {problem.message}", file=self.out)


def format_stats(pipeline: Pipeline, sinks: list[Sink], kernel: KernelStats | None = None) -> str:
    tcp = pipeline.tcp.stats
    tls = pipeline.tls.stats
    stats = pipeline.stats
    skipped = sum(stats.skipped.values())
    fragments = pipeline.defrag.stats
    undecryptable = ", ".join(f"{reason.replace('_', ' ')} {count}"
                              for reason, count in sorted(tls.undecryptable.items())) or "0"
    lines = [
        "--- captagent-tls stats ---",
        *([f"kernel: {kernel.received} packets received, {kernel.dropped} dropped, "
           f"{kernel.interface_dropped} dropped by the interface"] if kernel else []),
        f"packets: {stats.frames} read, {tcp.segments} TCP, {skipped} skipped"
        + (f" ({', '.join(f'{k} {v}' for k, v in sorted(stats.skipped.items()))})"
           if skipped else "")
        + (f"; IP fragments {fragments.fragments} ({fragments.reassembled} datagrams "
           f"reassembled, {fragments.expired} expired, {fragments.overflows} over the cap)"
           if fragments.fragments else ""),
        f"flows: {tcp.flows} TCP, {tls.connections} TLS, {tls.non_tls_flows} not TLS; out of "
        f"order {tcp.out_of_order}, duplicates {tcp.duplicates}, gaps {tcp.gaps} "
        f"({tcp.gap_bytes} bytes), buffer overflows {tcp.buffer_overflows}; evicted: "
        f"{tcp.evictions} flows, {tcp.timeouts} idle, {pipeline.tls.sessions.evictions} cached "
        "sessions",
        f"TLS sessions: {tls.sessions_full} full, {tls.sessions_resumed} resumed, "
        f"{tls.sessions_incomplete} ended before any protected record, "
        f"undecryptable: {undecryptable}",
        f"TLS records: {tls.records_decrypted} decrypted, {tls.records_failed} failed "
        f"authentication (dropped), {tls.records_unproven} with an unproven CBC IV "
        f"(dropped), {tls.records_undecrypted} without keys, {tls.records_expired} dropped "
        f"waiting for keys, {tls.records_over_hold_cap} over the hold cap; Finished verified "
        f"{tls.finished_verified}, failed {tls.finished_failed}",
        f"TLS events: {tls.alerts} alerts, {tls.key_updates} key updates, early data "
        f"{tls.early_data_records} records decrypted / {tls.early_data_skipped} skipped, "
        f"{tls.resyncs} resyncs after gaps, {tls.framing_errors} framing errors, "
        f"{tls.handshake_errors} unreadable handshake messages, "
        f"{tls.handshakes_too_large} handshakes too large",
        f"SIP messages: {stats.sip_messages} ({stats.plain_sip_messages} unencrypted); other "
        f"decrypted application data: {stats.raw_chunks} chunks, {stats.raw_bytes} bytes; "
        f"unencrypted non-SIP TCP: {stats.plain_other_bytes} bytes (not passed on)",
        *([f"internal errors: {stats.internal_errors} flows dropped"]
          if stats.internal_errors else []),
    ]
    for sink in sinks:
        if isinstance(sink, HepSink):
            lines.extend(sink.summary_lines())
    return "\n".join(lines)
