"""The state of one TLS handshake, and how a TLS 1.0-1.2 master secret is found for it: from a
key log (by client random, session ID, encrypted pre-master or pre-master), or by decrypting
the pre-master secret with the server's RSA key.  Pure functions of the handshake and the
key store; the connection decides what to do with the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from captagent_tls.tls import handshake as hsk
from captagent_tls.tls.keys import KeyStore, RsaKey
from captagent_tls.tls.keyschedule import SSL3, TLS12, key_block, master_secret, version_name
from captagent_tls.tls.problems import Reason
from captagent_tls.tls.protection import Decryptor, make_decryptor
from captagent_tls.tls.suites import CipherSuite, suite_name

if TYPE_CHECKING:
    from captagent_tls.tls.rsa_pool import RsaJob

# a handshake larger than this is not followed (real ones, certificate chains included, stay
# far below it); without a cap, an endless handshake would hold its transcript forever
MAX_TRANSCRIPT_BYTES = 1 << 20


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
    missing: Reason | None = None  # why no keys, if none turn up
    server_flight: bool = False  # the server sent what only a full handshake has
    gap: bool = False  # bytes of this handshake were lost: its transcript is incomplete
    transcript_bytes: int = 0
    proven: bool = False  # a Finished message verified
    rsa_job: RsaJob | None = None  # the pre-master being decrypted off the packet path
    rsa_proven: bool = False  # the job's key is the certificate's

    @property
    def key_exchange_seen(self) -> bool:
        return self.key_exchange is not None

    @property
    def offers_early_data(self) -> bool:
        return hsk.EXT_EARLY_DATA in self.client_hello.extensions

    def add_to_transcript(self, message: bytes) -> bool:
        """False when the transcript would grow past its cap."""
        self.transcript_bytes += len(message)
        if self.transcript_bytes > MAX_TRANSCRIPT_BYTES:
            return False
        self.transcript.append(message)
        return True


def hello_inconsistency(
    client: hsk.ClientHello, server: hsk.ServerHello, suite: CipherSuite | None, tls13: bool
) -> str:
    """Why a ServerHello cannot answer this ClientHello ("" when it can).

    A server picks one of the offered suites and a version the client offers; a ServerHello
    that does neither was not what the peers exchanged, and keys derived from it would open
    the records under the wrong cipher (RFC 5246 §7.4.1.3, RFC 8446 §4.1.3).
    """
    code = server.cipher_suite
    name = suite.name if suite is not None else suite_name(code)
    offered = client.cipher_suites
    wanted = code.to_bytes(2, "big")
    if not any(offered[at : at + 2] == wanted for at in range(0, len(offered) - 1, 2)):
        named = name if suite is not None else f"the unknown suite 0x{code:04X}"
        if suite is not None:
            named += f" (0x{code:04X})"
        return f"its ServerHello names {named}, which the ClientHello did not offer"
    version = server.version
    if tls13:
        if version not in client.supported_versions:
            return (
                f"its ServerHello selects {version_name(version)}, which the ClientHello "
                "did not offer"
            )
        if suite is not None and suite.key_exchange != "TLS13":
            return f"its ServerHello selects TLS 1.3 with {name}, which is not a TLS 1.3 suite"
        return ""
    if not SSL3 <= version <= min(client.version, TLS12):
        return (
            f"its ServerHello selects {version_name(version)}, but the ClientHello offered "
            f"up to {version_name(client.version)}"
        )
    if suite is not None and suite.key_exchange == "TLS13":
        return f"its ServerHello selects {version_name(version)} with the TLS 1.3 suite {name}"
    if suite is not None and suite.kind == "aead" and version < TLS12:
        return f"its ServerHello selects {version_name(version)} with {name}, a TLS 1.2 suite"
    return ""


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
    return master_secret(
        hs.version,
        suite.prf_hash,
        pre_master,
        hs.client_hello.random,
        hello.random,
        hs.session_hash,
    )


def rsa_candidates(hs: HandshakeState, keys: KeyStore) -> tuple[list[RsaKey], bool, Reason | None]:
    """The RSA keys that may decrypt this handshake's pre-master secret.

    Returns (keys, proven by the certificate, why none).  With the server's certificate in
    sight only the key that matches it is used; without one (or one we cannot read) every key
    is tried, and the first protected record will tell which master is right.
    """
    modulus = keys.certificate_modulus(hs.certificate) if hs.certificate else None
    if modulus is not None:
        key = keys.rsa_key_for_modulus(modulus)
        if key is None:
            return [], False, Reason.NO_KEY
        return [key], True, None
    if not keys.rsa_keys:
        return [], False, Reason.NO_KEY
    return list(keys.rsa_keys), False, None


def encrypted_pre_master(hs: HandshakeState) -> bytes:
    assert hs.key_exchange is not None
    return hsk.rsa_encrypted_pre_master(hs.key_exchange, ssl3=hs.version == SSL3)


def rsa_masters(
    hs: HandshakeState, pre_masters: list[bytes | None], proven: bool
) -> tuple[list[bytes], Reason | None]:
    """Master secrets from the pre-master secrets the candidate keys decrypted to (None where
    a key refused).  A pre-master must carry a version one of the hellos named."""
    versions = (hs.client_hello.version, hs.version)
    masters = [
        master_from_pre_master(hs, pre_master)
        for pre_master in pre_masters
        if pre_master is not None and int.from_bytes(pre_master[:2], "big") in versions
    ]
    if not masters:
        return [], Reason.NO_KEY if proven else Reason.KEY_MISMATCH
    return masters, None


def derive_decryptors(hs: HandshakeState, master: bytes) -> tuple[Decryptor, Decryptor]:
    """The key block, cut into the client's and the server's write keys (RFC 5246 §6.3)."""
    suite = hs.suite
    hello = hs.server_hello
    assert suite is not None and hello is not None
    mac, key, iv = suite.mac_len, suite.key_len, suite.iv_len
    block = key_block(
        hs.version,
        suite.prf_hash,
        master,
        hs.client_hello.random,
        hello.random,
        2 * (mac + key + iv),
    )
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
