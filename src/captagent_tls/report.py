"""What the user reads on stderr: problems (once each, within limits) and the stats summary."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import TextIO

from captagent_tls.counters import Counters
from captagent_tls.sinks import Sink
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
            more = (
                "; further problems of this kind are counted and summed up once a minute"
                if printed + 1 == PROBLEMS_IN_FULL
                else ""
            )
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
        print(
            f"captagent-tls: {count} more problem(s) of the same kind ({kind}) with other "
            f"servers; the latest: {latest}",
            file=self.out,
        )


def worker_lines(c: Counters) -> list[str]:
    """With worker processes: each one's share, and restarts."""
    packets = c.labelled("worker_packets")
    if not packets:
        return []
    workers = sorted(packets, key=lambda labels: int(labels[0]))

    def each(name: str) -> str:
        values = c.labelled(name)
        return " / ".join(str(int(values.get(w, 0))) for w in workers)

    kernel = (
        f", kernel drops {each('worker_kernel_dropped_packets')}"
        if c.labelled("worker_kernel_dropped_packets")
        else ""
    )
    cpu = c.labelled("worker_cpu_seconds")
    seconds = " / ".join(f"{cpu.get(w, 0):.2f}" for w in workers)
    return [
        f"workers: {len(workers)}; packets {each('worker_packets')}, SIP messages "
        f"{each('worker_sip_messages')}{kernel}; {c['worker_restarts']} restarted; "
        f"CPU {seconds} s"
    ]


def format_stats(counters: Counters, sinks: Iterable[Sink] = ()) -> str:
    """The end-of-run (and periodic) summary: the counters for people, then what each output
    has to say about itself."""
    c = counters
    skipped = c.labelled("packets_skipped")
    fragments = c.labelled("ip_fragments")
    sessions = c.labelled("tls_sessions")
    undecryptable = (
        ", ".join(
            f"{labels[0].replace('_', ' ')} {int(count)}"
            for labels, count in sorted(sessions.items())
            if labels[0] not in ("full", "resumed", "incomplete")
        )
        or "0"
    )
    records = {labels[0]: int(v) for labels, v in c.labelled("tls_records").items()}
    events = {labels[0]: int(v) for labels, v in c.labelled("tls_events").items()}
    websocket = {labels[0]: int(v) for labels, v in c.labelled("websocket").items()}
    kernel = (
        [
            f"kernel: {c['kernel_received_packets']} packets received, "
            f"{c['kernel_dropped_packets']} dropped, {c['interface_dropped_packets']} "
            "dropped by the interface"
        ]
        if "kernel_received_packets" in c.values
        else []
    )
    lines = [
        "--- captagent-tls stats ---",
        *kernel,
        f"packets: {c['packets']} read, {c['tcp_segments']} TCP, "
        f"{int(c.total('packets_skipped'))} skipped"
        + (
            f" ({', '.join(f'{k[0]} {int(v)}' for k, v in sorted(skipped.items()))})"
            if skipped
            else ""
        )
        + (
            f"; IP fragments {int(fragments.get(('fragments',), 0))} "
            f"({int(fragments.get(('reassembled',), 0))} datagrams reassembled, "
            f"{int(fragments.get(('expired',), 0))} expired, "
            f"{int(fragments.get(('overflows',), 0))} over the cap)"
            if fragments.get(("fragments",))
            else ""
        ),
        f"flows: {c['flows']} TCP, {c['tls_connections']} TLS, {c['non_tls_flows']} not TLS; "
        f"out of order {c['tcp_out_of_order']}, duplicates {c['tcp_duplicates']}, gaps "
        f"{c['tcp_gaps']} ({c['tcp_gap_bytes']} bytes), buffer overflows "
        f"{c['tcp_buffer_overflows']}; evicted: {c['flow_evictions']} flows, "
        f"{c['flow_timeouts']} idle, {c['session_cache_evictions']} cached sessions",
        f"TLS sessions: {int(sessions.get(('full',), 0))} full, "
        f"{int(sessions.get(('resumed',), 0))} resumed, "
        f"{int(sessions.get(('incomplete',), 0))} ended before any protected record, "
        f"undecryptable: {undecryptable}",
        f"TLS records: {records.get('decrypted', 0)} decrypted, "
        f"{records.get('failed_authentication', 0)} failed authentication (dropped), "
        f"{records.get('unproven_iv', 0)} with an unproven CBC IV (dropped), "
        f"{records.get('no_keys', 0)} without keys, "
        f"{records.get('expired_waiting_for_keys', 0)} dropped waiting for keys, "
        f"{records.get('over_hold_cap', 0)} over the hold cap; Finished verified "
        f"{int(c.get('tls_finished', 'verified'))}, failed {int(c.get('tls_finished', 'failed'))}",
        f"TLS events: {events.get('alerts', 0)} alerts, {events.get('key_updates', 0)} key "
        f"updates, early data {events.get('early_data_records', 0)} records decrypted / "
        f"{events.get('early_data_skipped', 0)} skipped, {events.get('resyncs', 0)} resyncs "
        f"after gaps, {events.get('framing_errors', 0)} framing errors, "
        f"{events.get('handshake_errors', 0)} unreadable handshake messages, "
        f"{events.get('handshakes_too_large', 0)} handshakes too large",
        f"SIP messages: {c['sip_messages']} ({c['sip_messages_unencrypted']} unencrypted); "
        f"other decrypted application data: {c['raw_chunks']} chunks, {c['raw_bytes']} bytes; "
        f"unencrypted non-SIP TCP: {c['plain_other_bytes']} bytes (not passed on)",
        f"SIP messages dropped: {int(c.get('sip_messages_dropped', 'message_size'))} over "
        f"{int(c.get('sip_bound_bytes', 'message_size')) >> 10} KiB, "
        f"{int(c.get('sip_messages_dropped', 'all_flows_held'))} while incomplete messages "
        f"held {int(c.get('sip_bound_bytes', 'all_flows_held')) >> 20} MiB "
        f"({c['sip_dropped_bytes']} bytes)",
        *(
            [
                f"WebSocket: {websocket.get('upgrades', 0)} upgrades "
                f"({websocket.get('sip_connections', 0)} SIP, "
                f"{websocket.get('other_connections', 0)} other, {websocket.get('refused', 0)} "
                f"refused), {websocket.get('picked_up', 0)} picked up mid-stream; "
                f"{websocket.get('messages', 0)} messages ({websocket.get('inflated', 0)} "
                f"inflated, {websocket.get('keepalives', 0)} keep-alives), "
                f"{websocket.get('control_frames', 0)} control frames"
            ]
            if any(websocket.values())
            else []
        ),
        f"key log: {c['key_log_secrets']} entries held, {c['key_log_evictions']} evicted (at "
        f"most {c['key_log_max_secrets']}); "
        f"lines from followed files and listeners: "
        f"{int(c.get('key_log_lines', 'added'))} added, "
        f"{int(c.get('key_log_lines', 'malformed'))} malformed; listener connections closed: "
        f"{int(c.get('key_log_connections_closed', 'make_room'))} to make room, "
        f"{int(c.get('key_log_connections_closed', 'idle'))} idle",
        *(
            [f"internal errors: {c['internal_errors']} flows dropped"]
            if c["internal_errors"]
            else []
        ),
        *worker_lines(c),
    ]
    for sink in sinks:
        lines.extend(sink.summary_lines())
    return "\n".join(lines)
