"""Prometheus metrics (``--metrics HOST:PORT``), from one counters snapshot at scrape time.

prometheus_client serves the text format from its own thread; the snapshot only reads
counters the capture loop keeps anyway, so the hot path pays nothing for metrics.  Every
metric, its kind, labels and help text come from ``counters.CATALOGUE``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from captagent_tls.counters import CATALOGUE, Counters
from captagent_tls.net.addresses import split_host_port

PREFIX = "captagent_tls"


class AgentCollector(Collector):
    def __init__(self, snapshot: Callable[[], Counters]):
        self.snapshot = snapshot

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        counters = self.snapshot()
        for name, spec in CATALOGUE.items():
            values = counters.values.get(name)
            if values is None:
                continue
            family_type = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
            family = family_type(
                f"{PREFIX}_{name}", spec.doc, labels=list(spec.labels) if spec.labels else None
            )
            for labels, value in sorted(values.items()):
                family.add_metric(list(labels), value)
            yield family


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


def start_metrics(address: str, snapshot: Callable[[], Counters]) -> None:
    """``--metrics HOST:PORT``: serve what ``snapshot`` says; a one-line error otherwise."""
    import logging

    from captagent_tls.errors import UserError

    try:
        serve_metrics(address, AgentCollector(snapshot))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot serve metrics on {address}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    logging.getLogger("captagent_tls").info("metrics on http://%s/metrics", address)
