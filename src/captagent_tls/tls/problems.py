"""Why (part of) a TLS session was not decrypted: one enum of reasons and one place for the
sentence a person reads about each.

Every reason must be true of the case it names.  A handshake message that was lost in a
capture gap is not "a connection that started before the capture", and a key that matches the
certificate is never reported as "none of the given keys matches".
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple


class Reason(StrEnum):
    """Why a session could not be decrypted.  The value is the stats key."""

    NO_HANDSHAKE = "no_handshake"  # the connection started before the capture
    HANDSHAKE_LOST = "handshake_lost"  # a hello was lost in a capture gap
    KEY_EXCHANGE_LOST = "key_exchange_lost"  # the RSA ClientKeyExchange was lost in a gap
    NO_KEY = "no_key"
    KEY_MISMATCH = "key_mismatch"
    SESSION_UNKNOWN = "session_unknown"
    NEEDS_KEY_LOG = "needs_key_log"
    UNSUPPORTED_SUITE = "unsupported_suite"
    INCONSISTENT = "inconsistent_handshake"  # hellos that contradict each other
    FINISHED_MISMATCH = "finished_mismatch"  # a Finished refutes the handshake we saw
    HANDSHAKE_TOO_LARGE = "handshake_too_large"
    KEYS_LATE = "keys_late"  # held for keys that did not come in time
    RECORDS_FAIL = "records_fail_authentication"  # keys found, but no record opens with them


class Notice(StrEnum):
    """Things a person should know that do not stop decryption (or stop only part of it)."""

    FINISHED_UNVERIFIABLE = "finished_unverifiable"
    RECORDS_DROPPED = "records_dropped"  # held records over a cap or past the wait
    EARLY_DATA_SKIPPED = "early_data_skipped"
    INTERNAL_ERROR = "internal_error"


# Undecryptable reasons after which no key that arrives later can help.
FINAL = frozenset(
    (
        Reason.UNSUPPORTED_SUITE,
        Reason.NO_HANDSHAKE,
        Reason.HANDSHAKE_LOST,
        Reason.INCONSISTENT,
        Reason.FINISHED_MISMATCH,
        Reason.HANDSHAKE_TOO_LARGE,
        Reason.KEYS_LATE,
        Reason.KEY_EXCHANGE_LOST,
    )
)


class Facts(NamedTuple):
    """What the wording of a reason may mention about the session."""

    server: str  # "10.0.0.1:5061"
    flow: str  # "10.0.0.2:40000 -> 10.0.0.1:5061"
    suite: str = ""
    suite_code: int = 0
    certificate_seen: bool = False
    rsa_keys_given: bool = False
    lost: str = ""  # which handshake message a gap took, e.g. "ClientHello"
    detail: str = ""  # what made the handshake inconsistent, or other specifics


def describe(reason: Reason, facts: Facts) -> str:
    """The one line a person reads about an undecryptable session."""
    server = facts.server
    if reason is Reason.NO_HANDSHAKE:
        return f"no handshake seen for {facts.flow}: it started before the capture"
    if reason is Reason.HANDSHAKE_LOST:
        lost = facts.lost or "the handshake"
        return (
            f"cannot decrypt {facts.flow}: the {lost} was lost in a capture gap"
            if facts.lost
            else f"cannot decrypt {facts.flow}: its handshake is not in the capture"
        )
    if reason is Reason.KEY_EXCHANGE_LOST:
        return (
            f"cannot decrypt the session on server {server}: its ClientKeyExchange was "
            "lost in a capture gap (a key log would decrypt it)"
        )
    if reason is Reason.NO_KEY:
        if facts.certificate_seen and facts.rsa_keys_given:
            return f"no key for server {server}: none of the given keys matches its certificate"
        if facts.rsa_keys_given:
            return f"no key for server {server}: no given key decrypts its pre-master secret"
        return f"no key for server {server}: no RSA key given"
    if reason is Reason.KEY_MISMATCH:
        return f"key mismatch for server {server}: no given key decrypts its session"
    if reason is Reason.SESSION_UNKNOWN:
        return (
            f"resumed session on server {server} whose full handshake is not in the "
            "capture (a key log would decrypt it)"
        )
    if reason is Reason.NEEDS_KEY_LOG:
        return (
            f"server {server} uses {facts.suite}: only a key log can decrypt it, and it "
            "has no entry for this session"
        )
    if reason is Reason.UNSUPPORTED_SUITE:
        return (
            f"unsupported cipher suite {facts.suite} (0x{facts.suite_code:04X}) on server {server}"
        )
    if reason is Reason.INCONSISTENT:
        return (
            f"not decrypting the session on server {server}: {facts.detail}; the capture "
            "was altered or damaged"
        )
    if reason is Reason.FINISHED_MISMATCH:
        return (
            f"not decrypting the session on server {server}: {facts.detail}, and no "
            "handshake bytes were lost, so the handshake in the capture was altered or "
            "damaged"
        )
    if reason is Reason.HANDSHAKE_TOO_LARGE:
        return f"not following the handshake on server {server}: {facts.detail}"
    if reason is Reason.RECORDS_FAIL:
        return (
            f"the records of the session on server {server} fail authentication with "
            "the keys found for it: the capture is damaged or altered"
        )
    if reason is Reason.KEYS_LATE:
        return f"no keys for {facts.flow} within the wait: {facts.detail}"
    raise AssertionError(reason)
