"""HEPv3 to HOMER collectors over UDP, TCP and TLS.

A capture daemon must neither lose a message nor stall the capture because a collector is slow
or down.  Each SIP message is encoded once (:mod:`.encoder`, sans-IO) and offered to every
collector's bounded queue (:mod:`.queue`, the one admission: packets and bytes, drops counted,
never an older packet).  Each collector has a sender thread that empties its queue: one
``sendto`` per packet for UDP (:mod:`.udp`); for TCP and TLS (:mod:`.stream`) connections with
reconnection and backoff, where a packet counts as delivered only once the collector's TCP
acknowledged it, and what a broken connection did not get is sent again on the next one
(:mod:`.ledger`, sans-IO; sockets and TLS in :mod:`.connection`).

:mod:`.addresses` is what checking a ``--hep`` value needs (``parse_collector``,
``CollectorAddressError``) and :mod:`.queue` holds :class:`QueueLimits`: neither loads the
collectors, their sockets or TLS, nor starts a thread.  So that importing them stays that
light, this package loads its modules on the first use of one of their names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_MODULES = {
    "addresses": (
        "CollectorAddressError",
        "HepConfigError",
        "SCHEMES",
        "format_collector",
        "parse_collector",
    ),
    "queue": ("PacketQueue", "QueueLimits"),
    "encoder": (
        "CHUNK_CORRELATION_ID",
        "CHUNK_NODE_NAME",
        "CHUNK_PAYLOAD",
        "MIN_SIP_PAYLOAD",
        "HepEncoder",
        "HepOptions",
        "HepTooLarge",
        "encode_hep3",
    ),
    "collector": ("Collector", "CollectorStats"),
    "tls_context": ("TlsOptions",),
    "stream": ("RetryPolicy", "StreamCollector"),
    "udp": ("UdpCollector",),
    "sink": ("HepSink", "HepSinkStats", "open_collector"),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "CHUNK_CORRELATION_ID",
    "CHUNK_NODE_NAME",
    "CHUNK_PAYLOAD",
    "Collector",
    "CollectorAddressError",
    "CollectorStats",
    "HepConfigError",
    "HepEncoder",
    "HepOptions",
    "HepSink",
    "HepSinkStats",
    "HepTooLarge",
    "MIN_SIP_PAYLOAD",
    "PacketQueue",
    "QueueLimits",
    "RetryPolicy",
    "SCHEMES",
    "StreamCollector",
    "TlsOptions",
    "UdpCollector",
    "encode_hep3",
    "format_collector",
    "open_collector",
    "parse_collector",
]

if TYPE_CHECKING:
    from captagent_tls.sinks.hep.addresses import (
        SCHEMES,
        CollectorAddressError,
        HepConfigError,
        format_collector,
        parse_collector,
    )
    from captagent_tls.sinks.hep.collector import Collector, CollectorStats
    from captagent_tls.sinks.hep.encoder import (
        CHUNK_CORRELATION_ID,
        CHUNK_NODE_NAME,
        CHUNK_PAYLOAD,
        MIN_SIP_PAYLOAD,
        HepEncoder,
        HepOptions,
        HepTooLarge,
        encode_hep3,
    )
    from captagent_tls.sinks.hep.queue import PacketQueue, QueueLimits
    from captagent_tls.sinks.hep.sink import HepSink, HepSinkStats, open_collector
    from captagent_tls.sinks.hep.stream import RetryPolicy, StreamCollector
    from captagent_tls.sinks.hep.tls_context import TlsOptions
    from captagent_tls.sinks.hep.udp import UdpCollector


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once: later look-ups do not come here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
