"""The state of one direction of a TLS connection.

A side moves through phases: plaintext, then protected (TLS 1.0-1.2, after its
ChangeCipherSpec), or early / handshake / application (TLS 1.3).
"""

from __future__ import annotations

from enum import IntEnum

from captagent_tls.tls.protection import Decryptor
from captagent_tls.tls.record_stream import RecordStream


class Phase(IntEnum):
    PLAIN = 0  # before any key change
    PROTECTED = 1  # TLS 1.0-1.2 after ChangeCipherSpec (or a record that shows it was lost)
    EARLY = 2  # TLS 1.3 client: 0-RTT data may come
    HANDSHAKE = 3  # TLS 1.3 handshake traffic keys
    APPLICATION = 4  # TLS 1.3 application traffic keys


# (master secret, this side's decryptor, the peer's): RSA keys to try when no certificate
# told which one the server has; the first protected record picks
Trial = tuple[bytes, Decryptor, Decryptor]
_NO_TRIALS: list[Trial] = []  # shared "none"; a side gets its own list when it needs one


class Side(RecordStream):
    """One direction: its record stream (what ``RecordStream`` keeps, inherited rather than
    held, so an idle session keeps one object per direction) and its keys."""

    __slots__ = (
        "handshake_buf",
        "decryptor",
        "fallback",
        "phase",
        "traffic_secret",
        "trials",
        "seq_unknown",
        "gap_pending",
        "handshake_gap",
        "expect_finished",
    )

    def __init__(self) -> None:
        super().__init__()
        self.handshake_buf: bytearray | None = None  # a handshake message still arriving
        self.decryptor: Decryptor | None = None
        self.fallback: Decryptor | None = None  # TLS 1.3 handshake keys, while early data runs
        self.phase = Phase.PLAIN
        self.traffic_secret = b""  # TLS 1.3 application secret, for KeyUpdate
        self.trials: list[Trial] = _NO_TRIALS
        self.seq_unknown = False  # records were lost: the next record's number is a guess
        self.gap_pending = False  # application bytes were lost: say so before the next ones
        self.handshake_gap = False  # bytes were lost while this side's handshake ran
        self.expect_finished = False  # the next protected handshake message must be Finished

    @property
    def encrypted(self) -> bool:
        return self.phase is not Phase.PLAIN

    @property
    def has_keys(self) -> bool:
        return self.decryptor is not None or bool(self.trials) or self.fallback is not None

    def lose_records(self) -> None:
        """Records of this side were lost: their sequence numbers (and a chained CBC IV) are
        unknown, and the application bytes they carried are missing."""
        self.seq_unknown = True
        self.gap_pending = True
        if self.decryptor is not None:
            self.decryptor.lost()
