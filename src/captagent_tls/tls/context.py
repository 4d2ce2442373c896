"""What every TLS connection shares: keys, the session cache, stats and limits.

The tracker hands one ``TlsContext`` to each connection.  Connections read keys and limits from
it and add to its counters; they never call back into the tracker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from captagent_tls.tls.keys import KeyStore
from captagent_tls.tls.rsa_pool import RsaPool
from captagent_tls.tls.sessions import SessionCache


@dataclass
class TlsStats:
    connections: int = 0
    non_tls_flows: int = 0
    # every session ends in exactly one of: full, resumed, incomplete, undecryptable[reason]
    sessions_full: int = 0
    sessions_resumed: int = 0
    sessions_incomplete: int = 0  # ended before any protected record
    undecryptable: dict[str, int] = field(default_factory=dict)
    records_decrypted: int = 0
    records_failed: int = 0  # tag, MAC or padding check failed: dropped
    records_unproven: int = 0  # authenticated, but its CBC IV was not: dropped
    records_undecrypted: int = 0  # no keys for them
    records_expired: int = 0  # held for keys that did not come in time
    records_over_hold_cap: int = 0  # did not fit while waiting for keys: dropped
    finished_verified: int = 0
    finished_failed: int = 0
    early_data_records: int = 0
    early_data_skipped: int = 0
    key_updates: int = 0
    handshake_errors: int = 0
    handshakes_too_large: int = 0
    framing_errors: int = 0
    resyncs: int = 0
    alerts: int = 0


@dataclass
class HoldLimits:
    """Records that wait for keys which may still arrive (a key log being written).

    The defaults hold 10 s of one connection carrying 100 calls/s with room to spare: that is
    about 3.5 MB of records (tests/test_late_keys.py measures 3.4 MB after 9.5 s).
    """

    max_wait_s: float = 10.0
    max_bytes_per_flow: int = 16 << 20
    max_bytes_total: int = 256 << 20


class HoldBudget:
    """Bytes held for keys over all connections, against the overall cap."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def fits(self, size: int) -> bool:
        return self.used + size <= self.limit


@dataclass(eq=False)
class TlsContext:
    keys: KeyStore
    sessions: SessionCache
    stats: TlsStats
    hold: HoldLimits
    keys_may_arrive: bool  # key logs still being written: hold records for their keys
    rsa: RsaPool | None = None  # None: RSA decryption in the capture loop's thread
    held: HoldBudget = field(init=False)
    # worker processes share their session caches: a resumed session that is not in the cache
    # may still come from another worker, so its records are held until it does or until every
    # worker has read past them (then they are handled as if they had never waited)
    sessions_shared: bool = field(default=False, init=False)
    settling: bool = field(default=False, init=False)  # handling records that waited so

    def __post_init__(self) -> None:
        self.held = HoldBudget(self.hold.max_bytes_total)
