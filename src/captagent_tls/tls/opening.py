"""Opening protected records: in order, after lost records (the sequence number is a guess),
TLS 1.3 early data, and trying the masters of several RSA keys on a session's first record."""

from __future__ import annotations

from captagent_tls.tls import tls13
from captagent_tls.tls.events import Event
from captagent_tls.tls.held import HeldRecord
from captagent_tls.tls.problems import Reason
from captagent_tls.tls.protection import Decryptor, RecordAuthError
from captagent_tls.tls.side import Phase, Side
from captagent_tls.tls.state import ConnectionState

RESYNC_MAX_SKIPPED_RECORDS = 256
END_OF_EARLY_DATA_MESSAGE = bytes([5, 0, 0, 0])  # its bytes are fixed (RFC 8446 §4.5)


def try_open(
    decryptor: Decryptor | None, content_type: int, version: int, fragment: bytes
) -> tuple[int, bytes] | None:
    """Open a record if this decryptor can; None (and no state change) if it cannot."""
    if decryptor is None:
        return None
    try:
        return decryptor.open(content_type, version, fragment)
    except RecordAuthError:
        return None


def guess_sequence(
    decryptor: Decryptor, content_type: int, version: int, fragment: bytes
) -> tuple[int, bytes] | None:
    """Open a record whose sequence number is not known: the next few are tried."""
    first = decryptor.seq
    guesses = range(first, first + RESYNC_MAX_SKIPPED_RECORDS)
    explicit = getattr(decryptor, "explicit", 0)
    if explicit and len(fragment) >= explicit:
        # most stacks use the sequence number as the explicit GCM/CCM nonce
        nonce_seq = int.from_bytes(fragment[:explicit], "big")
        if first <= nonce_seq < first + (1 << 20):
            guesses = range(nonce_seq, nonce_seq + 1)
    for seq in guesses:
        decryptor.seq = seq
        opened = try_open(decryptor, content_type, version, fragment)
        if opened is not None:
            return opened
    decryptor.seq = first
    return None


class RecordOpening(ConnectionState):
    __slots__ = ()

    def _open(
        self,
        direction: int,
        content_type: int,
        version: int,
        fragment: bytes,
        ts: int,
        events: list[Event],
    ) -> tuple[int, bytes] | None:
        side = self.sides[direction]
        if side.trials:
            return self._open_trial(direction, content_type, version, fragment, ts, events)
        if side.phase == Phase.EARLY:
            return self._open_early(side, content_type, version, fragment)
        decryptor = side.decryptor
        if decryptor is None:  # TLS 1.3 early data refused and no handshake keys yet
            self._no_keys(HeldRecord(direction, content_type, version, fragment, ts, False), events)
            return None
        if side.seq_unknown:
            return self._open_after_gap(direction, decryptor, content_type, version, fragment)
        return self._open_in_order(side, decryptor, content_type, version, fragment)

    def _open_in_order(
        self, side: Side, decryptor: Decryptor, content_type: int, version: int, fragment: bytes
    ) -> tuple[int, bytes] | None:
        """The next record of a side whose keys and sequence number are known."""
        try:
            opened = decryptor.open(content_type, version, fragment)
        except RecordAuthError:
            self.stats.records_failed += 1
            self.keys_failed = True
            decryptor.skip(fragment)  # it was sent: the next record follows it
            side.gap_pending = True
            return None
        self.stats.records_decrypted += 1
        return opened

    def _open_early(
        self, side: Side, content_type: int, version: int, fragment: bytes
    ) -> tuple[int, bytes] | None:
        """TLS 1.3 client records after a ClientHello offering 0-RTT: early data while the
        early keys open them, then (or if the server refused it) the handshake keys."""
        opened = try_open(side.decryptor, content_type, version, fragment)
        if opened is not None:
            self.stats.records_decrypted += 1
            self.stats.early_data_records += 1
            return opened
        opened = try_open(side.fallback, content_type, version, fragment)
        if opened is not None:
            self.stats.records_decrypted += 1
            side.decryptor, side.fallback, side.phase = side.fallback, None, Phase.HANDSHAKE
            hs = self.handshake
            if hs is not None and hs.early_data_accepted and not hs.end_of_early_data_seen:
                # it was sent under the early keys we lack; its bytes are fixed, and the
                # client's Finished covers them
                hs.transcript.append(END_OF_EARLY_DATA_MESSAGE)
                hs.end_of_early_data_seen = True
            return opened
        # early data whose keys we lack; the server may have refused it too
        self.stats.early_data_skipped += 1
        side.gap_pending = True
        return None

    def _open_after_gap(
        self, direction: int, decryptor: Decryptor, content_type: int, version: int, fragment: bytes
    ) -> tuple[int, bytes] | None:
        """After lost records the sequence number is unknown: try the next few.  In TLS 1.3
        the lost records may have ended the handshake: then the application keys open it."""
        side = self.sides[direction]
        opened = guess_sequence(decryptor, content_type, version, fragment)
        if opened is None and side.phase == Phase.HANDSHAKE and side.handshake_gap:
            secret = self._tls13_secret(self._role(direction), Phase.APPLICATION)
            if secret is not None and self.suite is not None:
                later = tls13.decryptor(self.suite, self.version, secret)
                opened = guess_sequence(later, content_type, version, fragment)
                if opened is not None:
                    side.phase, side.decryptor, side.traffic_secret = (
                        Phase.APPLICATION,
                        later,
                        secret,
                    )
        if opened is None:
            decryptor.skip(fragment)
            self.stats.records_failed += 1
            self.keys_failed = True
            return None
        side.seq_unknown = False
        self.stats.records_decrypted += 1
        self.stats.resyncs += 1
        return opened

    def _open_trial(
        self,
        direction: int,
        content_type: int,
        version: int,
        fragment: bytes,
        ts: int,
        events: list[Event],
    ) -> tuple[int, bytes] | None:
        """No certificate told us which key: the first protected record picks the master."""
        side = self.sides[direction]
        trials, side.trials = side.trials, []
        for master, mine, peers in trials:
            if side.seq_unknown:
                opened = guess_sequence(mine, content_type, version, fragment)
            else:
                opened = try_open(mine, content_type, version, fragment)
            if opened is None:
                continue
            self.stats.records_decrypted += 1
            side.decryptor = mine
            side.seq_unknown = False
            hs = self.handshake
            if hs is not None:
                hs.master = master
                hs.missing = None
                hs.candidates = []
                hs.pending[self._role(1 - direction)] = peers
                self._take_pending(hs, 1 - direction)
            return opened
        self.stats.records_failed += 1
        self._fail(Reason.KEY_MISMATCH, ts, events)
        return None
