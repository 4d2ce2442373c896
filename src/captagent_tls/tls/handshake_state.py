"""The state of one TLS handshake, and how a TLS 1.0-1.2 master secret is found for it: from a
key log (by client random, session ID, encrypted pre-master or pre-master), or by decrypting
the pre-master secret with the server's RSA key.  Pure functions of the handshake and the
key store; the connection decides what to do with the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from captagent_tls.tls import handshake as hsk
from captagent_tls.tls.keys import KeyStore
from captagent_tls.tls.keyschedule import SSL3, key_block, master_secret
from captagent_tls.tls.protection import Decryptor, make_decryptor
from captagent_tls.tls.suites import CipherSuite

# why no keys were found (stats keys, shared with the connection)
NO_KEY = "no_key"
KEY_MISMATCH = "key_mismatch"
SESSION_UNKNOWN = "session_unknown"
NEEDS_KEY_LOG = "needs_key_log"


@dataclass
class HandshakeState:
    """One handshake: the first of a connection, or a renegotiation."""

    client_hello: hsk.ClientHello
    transcript: list[bytes]
    server_hello: hsk.ServerHello | None = None
    suite: CipherSuite | None = None
    version: int = 0
    ems: bool = False
    etm: bool = False
    abbreviated: bool = False
    hello_retry: bool = False
    early_data_accepted: bool = False
    end_of_early_data_seen: bool = False
    certificate: bytes | None = None
    key_exchange: bytes | None = None  # the ClientKeyExchange body
    session_hash: bytes | None = None  # RFC 7627, when EMS was negotiated
    master: bytes | None = None
    master_source: str = ""
    candidates: list[bytes] = field(default_factory=list)  # masters still to be proven
    pending: list[Decryptor | None] = field(default_factory=lambda: [None, None])
    finished: list[bool] = field(default_factory=lambda: [False, False])
    ticket: bytes = b""
    missing: str = ""  # why no keys, if none turn up
    failed: str = ""
    counted: bool = False

    @property
    def key_exchange_seen(self) -> bool:
        return self.key_exchange is not None

    @property
    def offers_early_data(self) -> bool:
        return hsk.EXT_EARLY_DATA in self.client_hello.extensions


def logged_master(hs: HandshakeState, keys: KeyStore) -> bytes | None:
    """A master secret the key log gives directly: by client random or by session ID."""
    logged = keys.secrets_for(hs.client_hello.random)
    if logged is not None and logged.master_secret is not None:
        return logged.master_secret
    hello = hs.server_hello
    if hello is not None and hello.session_id:
        return keys.master_by_session_id.get(hello.session_id)
    return None


def logged_pre_master(hs: HandshakeState, keys: KeyStore) -> bytes | None:
    """A pre-master secret from the key log: by client random, or by the first bytes of the
    RSA-encrypted pre-master in the ClientKeyExchange."""
    logged = keys.secrets_for(hs.client_hello.random)
    if logged is not None and logged.pre_master is not None:
        return logged.pre_master
    if hs.key_exchange and hs.suite is not None and hs.suite.rsa_key_exchange:
        encrypted = hsk.rsa_encrypted_pre_master(hs.key_exchange, ssl3=hs.version == SSL3)
        return keys.pms_by_encrypted_prefix.get(encrypted[:8])
    return None


def master_from_pre_master(hs: HandshakeState, pre_master: bytes) -> bytes:
    suite, hello = hs.suite, hs.server_hello
    assert suite is not None and hello is not None
    return master_secret(hs.version, suite.prf_hash, pre_master, hs.client_hello.random,
                         hello.random, hs.session_hash)


def rsa_masters(hs: HandshakeState, keys: KeyStore) -> tuple[list[bytes], bool, str]:
    """Master secrets from decrypting the pre-master with our RSA keys.

    Returns (masters, proven by the certificate, why none).  With the server's certificate
    in sight only the key that matches it is used; without one (or one we cannot read) every
    key is tried, and the first protected record will tell which master is right.
    """
    assert hs.key_exchange is not None
    encrypted = hsk.rsa_encrypted_pre_master(hs.key_exchange, ssl3=hs.version == SSL3)
    candidates = keys.rsa_keys
    modulus = keys.certificate_modulus(hs.certificate) if hs.certificate else None
    if modulus is not None:
        key = keys.rsa_key_for_modulus(modulus)
        if key is None:
            return [], False, NO_KEY
        candidates = [key]
    elif not candidates:
        return [], False, NO_KEY
    versions = (hs.client_hello.version, hs.version)
    masters = []
    for key in candidates:
        pre_master = key.decrypt_pre_master(encrypted)
        if pre_master is not None and int.from_bytes(pre_master[:2], "big") in versions:
            masters.append(master_from_pre_master(hs, pre_master))
    if not masters:
        return [], False, NO_KEY if modulus is not None else KEY_MISMATCH
    return masters, modulus is not None, ""


def derive_decryptors(hs: HandshakeState, master: bytes) -> tuple[Decryptor, Decryptor]:
    """The key block, cut into the client's and the server's write keys (RFC 5246 §6.3)."""
    suite = hs.suite
    hello = hs.server_hello
    assert suite is not None and hello is not None
    mac, key, iv = suite.mac_len, suite.key_len, suite.iv_len
    block = key_block(hs.version, suite.prf_hash, master, hs.client_hello.random,
                      hello.random, 2 * (mac + key + iv))
    parts = []
    pos = 0
    for size in (mac, mac, key, key, iv, iv):
        parts.append(block[pos : pos + size])
        pos += size
    client_mac, server_mac, client_key, server_key, client_iv, server_iv = parts
    return (
        make_decryptor(suite, hs.version, client_key, client_iv, client_mac, hs.etm),
        make_decryptor(suite, hs.version, server_key, server_iv, server_mac, hs.etm),
    )
