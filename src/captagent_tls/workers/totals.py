"""The run's figures with workers: the totals of every worker's counters, per-worker figures
where they help an operator, and the end-of-run lines of the outputs the workers run (HEP).

Most counters add up (each packet, flow and message is one worker's).  Some describe what
every worker holds or does alike, and adding them would multiply them by the number of
workers: the key store and the followed key-log files (every worker holds every secret and
reads every key-log file), the bounds every worker applies to itself (``sip_bound_bytes``),
the loss of the interface that every worker's capture sees (``capture_*``), and with a
capture file the IP fragments (every worker reassembles every fragmented datagram and keeps
its own).  Those are the largest worker's figure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from captagent_tls.counters import CATALOGUE, Counters
from captagent_tls.sinks import Sink

# every worker holds or does the same: the largest figure, not the sum
SHARED = frozenset(
    (
        "key_log_secrets",
        "key_log_evictions",
        "key_log_max_secrets",
        "key_log_lines",
        "key_log_connections_closed",
        "ip_fragments",
        "sip_bound_bytes",
        # every worker's handle is lost and re-opened with the interface: how often and how
        # long the agent was blind is the most any worker was
        "capture_reopens",
        "capture_blind_seconds",
    )
)
PER_WORKER = (
    ("packets", "worker_packets"),
    ("sip_messages", "worker_sip_messages"),
    ("kernel_dropped_packets", "worker_kernel_dropped_packets"),
)
CPU = "worker_cpu_seconds"  # set by each worker for itself


def combine(snapshots: Iterable[tuple[int, Counters]]) -> Counters:
    """The totals of the workers' snapshots (by worker index), with per-worker figures."""
    total = Counters()
    shared: dict[str, dict[tuple[str, ...], float]] = {}
    for index, snapshot in snapshots:
        for name, values in snapshot.values.items():
            if name in SHARED:
                mine = shared.setdefault(name, {})
                for labels, value in values.items():
                    mine[labels] = max(mine.get(labels, 0), value)
        summed = Counters()
        summed.values = {
            name: values
            for name, values in snapshot.values.items()
            if name not in SHARED and name != CPU
        }
        if CPU in snapshot.values:
            total.set(CPU, snapshot.get(CPU, "self"), str(index))
        total.add(summed)
        for name, per_worker in PER_WORKER:
            if name in snapshot.values:
                total.set(per_worker, snapshot.get(name), str(index))
    for name, values in shared.items():
        for labels, value in values.items():
            total.set(name, value, *labels)
    return total


def only_counters(snapshot: Counters) -> Counters:
    """What a worker that is gone still contributes: its counters (which only grow), not its
    gauges (what it held is gone with it)."""
    kept = Counters()
    kept.values = {
        name: dict(values)
        for name, values in snapshot.values.items()
        if CATALOGUE[name].kind == "counter" and not name.startswith("worker_")
    }
    return kept


# -- the HEP outputs' end-of-run lines --------------------------------------------------------


def sink_states(sinks: Iterable[Sink]) -> list[Any]:
    """What the parent needs of a worker's outputs for the end-of-run lines: their figures,
    picklable."""
    from captagent_tls.sinks.hep import HepSink

    states = []
    for sink in sinks:
        if isinstance(sink, HepSink):
            states.append(
                SimpleNamespace(
                    stats=sink.stats,
                    collectors=[
                        SimpleNamespace(address=c.address, scheme=c.scheme, stats=c.stats)
                        for c in sink.collectors
                    ],
                )
            )
    return states


def _added(a: Any, b: Any) -> Any:
    """Two snapshots of the same dataclass, added up field by field (text: the latest that
    says something; flags: either)."""
    changes = {}
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, bool):
            changes[f.name] = x or y
        elif isinstance(x, int | float):
            changes[f.name] = x + y
        else:
            changes[f.name] = y or x
    return dataclasses.replace(a, **changes)


def merged_hep(worker_states: Iterable[list[Any]]) -> list[Any]:
    """The HEP outputs' figures of all workers together, one per HEP output, shaped as the
    sink is (``stats``, ``collectors``) for its end-of-run lines."""
    merged: list[Any] = []
    for states in worker_states:
        if not merged:
            merged = [
                SimpleNamespace(
                    stats=s.stats, collectors=[SimpleNamespace(**vars(c)) for c in s.collectors]
                )
                for s in states
            ]
            continue
        for total, state in zip(merged, states, strict=False):
            total.stats = _added(total.stats, state.stats)
            for collector, other in zip(total.collectors, state.collectors, strict=False):
                collector.stats = _added(collector.stats, other.stats)
    return merged


class WorkersHep(Sink):
    """Stands for the HEP outputs the workers ran, at the end of a run: their summary lines
    and what they could not deliver."""

    def __init__(self, worker_states: Iterable[list[Any]]):
        self.merged = merged_hep(worker_states)

    def emit(self, message: Any) -> None:  # pragma: no cover - never an output
        raise NotImplementedError

    def summary_lines(self, verbose: bool = False) -> list[str]:
        from captagent_tls.sinks.hep import HepSink

        return [line for total in self.merged for line in HepSink.summary_lines(total, verbose)]

    def shortfall(self) -> str | None:
        from captagent_tls.sinks.hep import HepSink

        return "; ".join(filter(None, (HepSink.shortfall(total) for total in self.merged))) or None
