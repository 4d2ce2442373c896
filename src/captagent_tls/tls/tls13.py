"""TLS 1.3 key handling: traffic secrets from the key log, record decryptors made from them,
KeyUpdate, and 0-RTT data that arrives before the ServerHello names the suite."""

from __future__ import annotations

from captagent_tls.tls.keys import KeyStore
from captagent_tls.tls.keyschedule import TLS13, hash_algorithm, next_traffic_secret, traffic_key_iv
from captagent_tls.tls.protection import AeadDecryptor, Decryptor, RecordAuthError
from captagent_tls.tls.side import Phase
from captagent_tls.tls.suites import CipherSuite, lookup

CLIENT, SERVER = 0, 1  # roles, as opposed to flow directions

SECRET_LABELS = {
    (CLIENT, Phase.EARLY): "CLIENT_EARLY_TRAFFIC_SECRET",
    (CLIENT, Phase.HANDSHAKE): "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    (SERVER, Phase.HANDSHAKE): "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    (CLIENT, Phase.APPLICATION): "CLIENT_TRAFFIC_SECRET_0",
    (SERVER, Phase.APPLICATION): "SERVER_TRAFFIC_SECRET_0",
}


def is_tls13(version: int) -> bool:
    return version >= TLS13  # includes the 0x7fXX drafts


def logged_secret(keys: KeyStore, client_random: bytes, role: int, phase: Phase) -> bytes | None:
    logged = keys.secrets_for(client_random)
    label = SECRET_LABELS.get((role, phase))  # (none for a side that never got its keys)
    if logged is None or label is None:
        return None
    return logged.tls13.get(label)


def decryptor(suite: CipherSuite, version: int, secret: bytes) -> Decryptor:
    key, iv = traffic_key_iv(suite.prf_hash, secret, suite.key_len)
    return AeadDecryptor(suite, key, iv, version)


def next_secret(suite: CipherSuite, secret: bytes) -> bytes:
    """KeyUpdate: application_traffic_secret_N+1."""
    return next_traffic_secret(suite.prf_hash, secret)


def open_early_data(
    offered_suites: bytes, secret: bytes, content_type: int, version: int, fragment: bytes
) -> tuple[Decryptor, CipherSuite, tuple[int, bytes]] | None:
    """0-RTT data before the ServerHello: its suite is the resumed session's, one the
    ClientHello offers, so the offered TLS 1.3 suites whose hash fits the secret are tried
    until one authenticates the record."""
    for at in range(0, len(offered_suites) - 1, 2):
        suite = lookup(int.from_bytes(offered_suites[at : at + 2], "big"))
        if (
            suite is None
            or suite.key_exchange != "TLS13"
            or not suite.supported
            or hash_algorithm(suite.prf_hash).digest_size != len(secret)
        ):
            continue
        candidate = decryptor(suite, TLS13, secret)
        try:
            opened = candidate.open(content_type, version, fragment)
        except RecordAuthError:
            continue
        return candidate, suite, opened
    return None
