"""What the user reads on stderr: problems (once each, within limits) and the stats summary."""

from __future__ import annotations

from collections import OrderedDict
from typing import TextIO

from captagent_tls.capture.live import KernelStats
from captagent_tls.pipeline import Pipeline
from captagent_tls.sinks import Sink
from captagent_tls.sinks.hep import HepSink
from captagent_tls.tls.events import TlsProblem

SEEN_PROBLEMS = 10_000  # (kind, server) pairs remembered; the least recently seen go first
PROBLEMS_IN_FULL = 20  # per kind, the first distinct problems are printed as they come...
PROBLEM_SUMMARY_INTERVAL_NS = 60_000_000_000  # ...then one count per minute (capture time)


class ProblemReporter:
    """Prints each distinct problem once (per kind and server), however many flows hit it.

    Anyone can make new "servers" (addresses and ports) on the wire, so this is bounded too:
    the first ``PROBLEMS_IN_FULL`` of each kind are printed, later ones are counted and
    printed as one line per ``PROBLEM_SUMMARY_INTERVAL_NS`` of capture time (and by
    ``flush`` at the end); at most ``SEEN_PROBLEMS`` pairs are remembered.
    """

    def __init__(self, out: TextIO):
        self.out = out
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._printed: dict[str, int] = {}  # per kind
        # per kind: problems not printed yet, capture time of the first of them, latest message
        self._unprinted: dict[str, tuple[int, int, str]] = {}
        self.suppressed = 0  # distinct problems not printed on their own line

    def report(self, problem: TlsProblem) -> None:
        key = (problem.kind, problem.server)
        seen = self._seen
        if key in seen:
            seen.move_to_end(key)
            return
        seen[key] = None
        if len(seen) > SEEN_PROBLEMS:
            seen.popitem(last=False)
        kind = problem.kind
        printed = self._printed.get(kind, 0)
        if printed < PROBLEMS_IN_FULL:
            self._printed[kind] = printed + 1
            more = ("; further problems of this kind are counted and summed up once a minute"
                    if printed + 1 == PROBLEMS_IN_FULL else "")
            print(f"captagent-tls: {problem.message}{more}", file=self.out)
            return
        self.suppressed += 1
        count, since, _ = self._unprinted.get(kind, (0, problem.ts_ns, ""))
        self._unprinted[kind] = (count + 1, since, problem.message)
        if problem.ts_ns - since >= PROBLEM_SUMMARY_INTERVAL_NS:
            self._summary(kind)

    def flush(self) -> None:
        """Print the counts not printed yet (at the end of a run)."""
        for kind in list(self._unprinted):
            self._summary(kind)

    def _summary(self, kind: str) -> None:
        count, _, latest = self._unprinted.pop(kind)
        print(f"captagent-tls: {count} more problem(s) of the same kind ({kind}) with other "
              f"servers; the latest: {latest}", file=self.out)


def format_stats(pipeline: Pipeline, sinks: list[Sink], kernel: KernelStats | None = None) -> str:
    tcp = pipeline.tcp.stats
    tls = pipeline.tls.stats
    stats = pipeline.stats
    sip = pipeline.sip_budget
    keys = pipeline.tls.keys
    sources = keys.source_totals()
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
        f"SIP messages dropped: {sip.oversized_messages} over "
        f"{sip.max_message_bytes >> 10} KiB, {sip.over_budget_messages} while incomplete "
        f"messages held {sip.limit >> 20} MiB ({sip.dropped_bytes} bytes)",
        f"key log: {keys.entries} entries held, {keys.evictions} evicted (at most "
        f"{keys.max_entries})"
        + (f"; followed files and listeners: {sources.lines_added} lines added, "
           f"{sources.malformed_lines} malformed; listener connections closed: "
           f"{sources.connections_evicted} to make room, {sources.connections_idle} idle"
           if keys.source_stats else ""),
        *([f"internal errors: {stats.internal_errors} flows dropped"]
          if stats.internal_errors else []),
    ]
    for sink in sinks:
        if isinstance(sink, HepSink):
            lines.extend(sink.summary_lines())
    return "\n".join(lines)
