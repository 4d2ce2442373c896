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


def _shown(verbose: bool, *items: tuple[str, float]) -> list[str]:
    """The items' texts: all of them with ``verbose``, else those whose value is not zero."""
    return [text for text, value in items if verbose or value]


def _group(prefix: str, texts: list[str]) -> list[str]:
    return [prefix + ", ".join(texts)] if texts else []


def format_stats(counters: Counters, sinks: Iterable[Sink] = (), verbose: bool = False) -> str:
    """The end-of-run (and periodic) summary: the counters for people, then what each output
    has to say about itself.  A counter that is zero says nothing unless ``verbose`` (-v):
    the lines that are left read at a glance; packets read and SIP messages always show."""
    c = counters
    v = verbose
    skipped = c.labelled("packets_skipped")
    fragments = c.labelled("ip_fragments")
    sessions = c.labelled("tls_sessions")
    undecryptable = [
        (f"{labels[0].replace('_', ' ')} {int(count)}", count)
        for labels, count in sorted(sessions.items())
        if labels[0] not in ("full", "resumed", "incomplete")
    ]
    records = {labels[0]: int(value) for labels, value in c.labelled("tls_records").items()}
    events = {labels[0]: int(value) for labels, value in c.labelled("tls_events").items()}
    websocket = {labels[0]: int(value) for labels, value in c.labelled("websocket").items()}
    lines = ["--- captagent-tls stats ---"]
    if "kernel_received_packets" in c.values:
        kernel = [
            f"kernel: {c['kernel_received_packets']} packets received, "
            f"{c['kernel_dropped_packets']} dropped"
            + (
                f", {c['interface_dropped_packets']} dropped by the interface"
                if v or c["interface_dropped_packets"]
                else ""
            )
        ]
        if v or c["capture_reopens"] or c.get("capture_blind_seconds"):
            kernel.append(
                f"capture re-opened {c['capture_reopens']} times after its interface was "
                f"lost, {c.get('capture_blind_seconds'):.1f} s without capture"
            )
        lines.append("; ".join(kernel))
    packets = [
        f"{c['packets']} read",
        *_shown(
            v,
            (f"{c['tcp_segments']} TCP", c["tcp_segments"]),
            (
                f"{int(c.total('packets_skipped'))} skipped"
                + (
                    f" ({', '.join(f'{k[0]} {int(n)}' for k, n in sorted(skipped.items()))})"
                    if skipped
                    else ""
                ),
                c.total("packets_skipped"),
            ),
        ),
    ]
    line = "packets: " + ", ".join(packets)
    if fragments.get(("fragments",)):
        line += (
            f"; IP fragments {int(fragments.get(('fragments',), 0))} "
            f"({int(fragments.get(('reassembled',), 0))} datagrams reassembled, "
            f"{int(fragments.get(('expired',), 0))} expired, "
            f"{int(fragments.get(('overflows',), 0))} over the cap)"
        )
    lines.append(line)
    flows = [
        *_group(
            "",
            _shown(
                v,
                (f"{c['flows']} TCP", c["flows"]),
                (f"{c['tls_connections']} TLS", c["tls_connections"]),
                (f"{c['non_tls_flows']} not TLS", c["non_tls_flows"]),
            ),
        ),
        *_group(
            "",
            _shown(
                v,
                (f"out of order {c['tcp_out_of_order']}", c["tcp_out_of_order"]),
                (f"duplicates {c['tcp_duplicates']}", c["tcp_duplicates"]),
                (f"gaps {c['tcp_gaps']} ({c['tcp_gap_bytes']} bytes)", c["tcp_gaps"]),
                (f"buffer overflows {c['tcp_buffer_overflows']}", c["tcp_buffer_overflows"]),
            ),
        ),
        *_group(
            "evicted: ",
            _shown(
                v,
                (f"{c['flow_evictions']} flows", c["flow_evictions"]),
                (f"{c['flow_timeouts']} idle", c["flow_timeouts"]),
                (f"{c['session_cache_evictions']} cached sessions", c["session_cache_evictions"]),
            ),
        ),
    ]
    if flows:
        lines.append("flows: " + "; ".join(flows))
    tls = _shown(
        v,
        (f"{int(sessions.get(('full',), 0))} full", sessions.get(("full",), 0)),
        (f"{int(sessions.get(('resumed',), 0))} resumed", sessions.get(("resumed",), 0)),
        (
            f"{int(sessions.get(('incomplete',), 0))} ended before any protected record",
            sessions.get(("incomplete",), 0),
        ),
    )
    undecryptable_shown = _shown(v, *undecryptable)
    if v or undecryptable_shown:
        tls.append("undecryptable: " + (", ".join(undecryptable_shown) or "0"))
    if tls:
        lines.append("TLS sessions: " + ", ".join(tls))
    record_parts = _shown(
        v,
        (f"{records.get('decrypted', 0)} decrypted", records.get("decrypted", 0)),
        (
            f"{records.get('failed_authentication', 0)} failed authentication (dropped)",
            records.get("failed_authentication", 0),
        ),
        (
            f"{records.get('unproven_iv', 0)} with an unproven CBC IV (dropped)",
            records.get("unproven_iv", 0),
        ),
        (f"{records.get('no_keys', 0)} without keys", records.get("no_keys", 0)),
        (
            f"{records.get('expired_waiting_for_keys', 0)} dropped waiting for keys",
            records.get("expired_waiting_for_keys", 0),
        ),
        (f"{records.get('over_hold_cap', 0)} over the hold cap", records.get("over_hold_cap", 0)),
    )
    finished = _group(
        "Finished ",
        _shown(
            v,
            (
                f"verified {int(c.get('tls_finished', 'verified'))}",
                c.get("tls_finished", "verified"),
            ),
            (f"failed {int(c.get('tls_finished', 'failed'))}", c.get("tls_finished", "failed")),
        ),
    )
    if record_parts or finished:
        lines.append("TLS records: " + "; ".join(_group("", record_parts) + finished))
    early = (
        f"early data {events.get('early_data_records', 0)} records decrypted / "
        f"{events.get('early_data_skipped', 0)} skipped"
    )
    event_parts = _shown(
        v,
        (f"{events.get('alerts', 0)} alerts", events.get("alerts", 0)),
        (f"{events.get('key_updates', 0)} key updates", events.get("key_updates", 0)),
        (early, events.get("early_data_records", 0) + events.get("early_data_skipped", 0)),
        (f"{events.get('resyncs', 0)} resyncs after gaps", events.get("resyncs", 0)),
        (f"{events.get('framing_errors', 0)} framing errors", events.get("framing_errors", 0)),
        (
            f"{events.get('handshake_errors', 0)} unreadable handshake messages",
            events.get("handshake_errors", 0),
        ),
        (
            f"{events.get('handshakes_too_large', 0)} handshakes too large",
            events.get("handshakes_too_large", 0),
        ),
    )
    if event_parts:
        lines.append("TLS events: " + ", ".join(event_parts))
    sip = f"SIP messages: {c['sip_messages']}"
    if v or c["sip_messages_unencrypted"]:
        sip += f" ({c['sip_messages_unencrypted']} unencrypted)"
    other = [
        *_group(
            "other decrypted application data: ",
            [f"{c['raw_chunks']} chunks, {c['raw_bytes']} bytes"] if v or c["raw_chunks"] else [],
        ),
        *_group(
            "unencrypted non-SIP TCP: ",
            [f"{c['plain_other_bytes']} bytes (not passed on)"]
            if v or c["plain_other_bytes"]
            else [],
        ),
    ]
    lines.append("; ".join([sip, *other]))
    dropped_by_size = int(c.get("sip_messages_dropped", "message_size"))
    dropped_by_total = int(c.get("sip_messages_dropped", "all_flows_held"))
    if v or dropped_by_size or dropped_by_total:
        lines.append(
            f"SIP messages dropped: {dropped_by_size} over "
            f"{int(c.get('sip_bound_bytes', 'message_size')) >> 10} KiB, "
            f"{dropped_by_total} while incomplete messages "
            f"held {int(c.get('sip_bound_bytes', 'all_flows_held')) >> 20} MiB "
            f"({c['sip_dropped_bytes']} bytes)"
        )
    if any(websocket.values()):
        lines.append(
            f"WebSocket: {websocket.get('upgrades', 0)} upgrades "
            f"({websocket.get('sip_connections', 0)} SIP, "
            f"{websocket.get('other_connections', 0)} other, {websocket.get('refused', 0)} "
            f"refused), {websocket.get('picked_up', 0)} picked up mid-stream; "
            f"{websocket.get('messages', 0)} messages ({websocket.get('inflated', 0)} "
            f"inflated, {websocket.get('keepalives', 0)} keep-alives), "
            f"{websocket.get('control_frames', 0)} control frames"
        )
    lines.extend(_media_lines(c, v))
    key_lines = c.labelled("key_log_lines")
    closed = c.labelled("key_log_connections_closed")
    if v or c["key_log_secrets"] or any(key_lines.values()) or any(closed.values()):
        lines.append(
            f"key log: {c['key_log_secrets']} entries held, {c['key_log_evictions']} evicted "
            f"(at most {c['key_log_max_secrets']}); "
            f"lines from followed files and listeners: "
            f"{int(c.get('key_log_lines', 'added'))} added, "
            f"{int(c.get('key_log_lines', 'malformed'))} malformed; listener connections "
            f"closed: {int(c.get('key_log_connections_closed', 'make_room'))} to make room, "
            f"{int(c.get('key_log_connections_closed', 'idle'))} idle"
        )
    if c["internal_errors"]:
        lines.append(f"internal errors: {c['internal_errors']} flows dropped")
    lines.extend(worker_lines(c))
    for sink in sinks:
        lines.extend(sink.summary_lines(verbose))
    return "\n".join(lines)


def _media_lines(c: Counters, verbose: bool) -> list[str]:
    """Calls' media: RTCP reports and what else became of RTCP, RTP streams, calls."""
    rtcp = {labels[0]: int(value) for labels, value in c.labelled("media_rtcp").items()}
    streams = {labels[0]: int(value) for labels, value in c.labelled("media_rtp_streams").items()}
    calls = {labels[0]: int(value) for labels, value in c.labelled("media_calls").items()}
    dtls = {labels[0]: int(value) for labels, value in c.labelled("media_dtls").items()}
    if "media_calls_active" not in c.values:
        return []  # (no media seen, or media off)
    if not (any(rtcp.values()) or any(streams.values()) or any(calls.values()) or verbose):
        return []
    rtcp_parts = [
        f"{count} {why.replace('_', ' ')}"
        for why, count in sorted(rtcp.items(), key=lambda item: item[0] != "reported")
        if verbose or count
    ]
    parts = [
        f"media: {calls.get('started', 0)} calls with SDP",
        "RTCP " + (", ".join(rtcp_parts) or "0"),
        "RTP streams "
        + (
            ", ".join(
                f"{count} {why.replace('_', ' ')}"
                for why, count in sorted(streams.items())
                if verbose or count
            )
            or "0"
        ),
    ]
    if verbose or any(dtls.values()):
        parts.append(
            "DTLS "
            + (
                ", ".join(
                    f"{count} {kind.replace('_', ' ')}" for kind, count in sorted(dtls.items())
                )
                or "0"
            )
        )
    return ["; ".join(parts)]
