"""Key material the decryptor may use: RSA private keys (matched to servers by the public key in
their certificate) and secrets from NSS key logs.  Reading key files is the edges' job; this
module holds loaded objects and answers lookups.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cryptography.hazmat.primitives.asymmetric import padding, rsa

from captagent_tls.counters import Counters
from captagent_tls.tls.certificate import rsa_modulus

PMS_LENGTH = 48
# Key-log secrets held at most (one entry per client random, encrypted pre-master prefix or
# session ID); beyond it the oldest go first.  Measured with tracemalloc (CPython 3.11, x86-64,
# 400,000 entries loaded by load_key_log): a CLIENT_RANDOM entry takes ~320 bytes, a TLS 1.3
# client random with its five secrets ~830, an RSA or Session-ID line ~240-260.  400,000
# entries are therefore ~130 MB for a TLS 1.2 key log and ~330 MB for TLS 1.3: the most we
# want to spend.  That is over six minutes of history at a thousand new TLS sessions a
# second, and live a secret is needed only until its handshake has been seen (or, held for
# keys, within --key-wait).  An offline run with a bigger key log loses its oldest secrets:
# the stats summary counts them, and the bound should be an option for that case.
MAX_KEY_ENTRIES = 400_000


@dataclass(eq=False)
class RsaKey:
    private_key: rsa.RSAPrivateKey
    label: str  # where it came from, for messages (never the key itself)
    modulus: int = 0

    def __post_init__(self) -> None:
        self.modulus = self.private_key.private_numbers().public_numbers.n

    def decrypt_pre_master(self, encrypted: bytes) -> bytes | None:
        """RSA PKCS#1 v1.5 decryption of a pre-master secret.

        OpenSSL answers a wrong key with implicit rejection (random bytes of a random length)
        rather than an error, so a length other than 48 means "not this key".  Only a Finished
        message that verifies proves the key right.
        """
        if len(encrypted) != (self.modulus.bit_length() + 7) // 8:
            return None
        try:
            pms = self.private_key.decrypt(encrypted, padding.PKCS1v15())
        except ValueError:
            return None
        return pms if len(pms) == PMS_LENGTH else None


# shared by entries without TLS 1.3 secrets (most of a TLS 1.2 key log), read-only
_NO_TLS13: Mapping[str, bytes] = MappingProxyType({})


@dataclass(slots=True)
class KeyLogSecrets:
    """Secrets from a key log for one client random."""

    master_secret: bytes | None = None
    pre_master: bytes | None = None
    tls13: Mapping[str, bytes] = field(default_factory=lambda: _NO_TLS13)

    def add_tls13(self, label: str, secret: bytes) -> None:
        if isinstance(self.tls13, dict):
            self.tls13[label] = secret
        else:
            self.tls13 = {label: secret}


@dataclass
class KeySourceStats:
    """What one source of key-log lines (a followed file, a listener) did."""

    lines_added: int = 0
    malformed_lines: int = 0  # including lines too long to be key-log lines (dropped unread)
    connections_evicted: int = 0  # listener connections closed to make room for a new one
    connections_idle: int = 0  # listener connections closed after the idle timeout


class KeyStore:
    """Everything we can decrypt with.  Lookups are by certificate, client random, encrypted
    pre-master prefix, or session ID.

    Key-log secrets are bounded: at most ``max_entries`` of them across the three maps, the
    oldest evicted first (``evictions`` counts them).  Add them with ``client_random_entry``,
    ``add_pre_master_for_prefix`` and ``add_master_for_session``, which keep that bound.
    """

    CERT_CACHE = 1024

    def __init__(self, max_entries: int = MAX_KEY_ENTRIES) -> None:
        self.rsa_keys: list[RsaKey] = []
        self._by_modulus: dict[int, RsaKey] = {}
        self._cert_moduli: OrderedDict[bytes, int | None] = OrderedDict()
        self.by_client_random: dict[bytes, KeyLogSecrets] = {}
        self.pms_by_encrypted_prefix: dict[bytes, bytes] = {}
        self.master_by_session_id: dict[bytes, bytes] = {}
        self.generation = 0  # bumped whenever secrets are added, so waiting flows can retry
        self.max_entries = max_entries
        self.evictions = 0
        # every entry of the three maps, oldest first: evicting from a deque is O(1), where
        # taking the first key of a dict again and again rescans the holes it leaves
        self._age: deque[tuple[dict[bytes, KeyLogSecrets] | dict[bytes, bytes], bytes]] = deque()
        # the counters of every key source that fills this store, for the stats summary
        self.source_stats: list[KeySourceStats] = []

    @property
    def entries(self) -> int:
        return len(self._age)

    def client_random_entry(self, client_random: bytes) -> KeyLogSecrets:
        """The secrets for a client random, a new entry if there was none."""
        entry = self.by_client_random.get(client_random)
        if entry is None:
            entry = self.by_client_random[client_random] = KeyLogSecrets()
            self._added(self.by_client_random, client_random)
        return entry

    def add_pre_master_for_prefix(self, prefix: bytes, pre_master: bytes) -> None:
        self._put(self.pms_by_encrypted_prefix, prefix, pre_master)

    def add_master_for_session(self, session_id: bytes, master: bytes) -> None:
        self._put(self.master_by_session_id, session_id, master)

    def _put(self, mapping: dict[bytes, bytes], key: bytes, value: bytes) -> None:
        known = key in mapping
        mapping[key] = value
        if not known:
            self._added(mapping, key)

    def _added(self, mapping: dict[bytes, KeyLogSecrets] | dict[bytes, bytes], key: bytes) -> None:
        age = self._age
        age.append((mapping, key))
        while len(age) > self.max_entries:
            oldest_map, oldest_key = age.popleft()
            del oldest_map[oldest_key]
            self.evictions += 1

    def add_counters(self, counters: Counters) -> None:
        sources = self.source_totals()
        counters.set("key_log_secrets", self.entries)
        counters.set("key_log_evictions", self.evictions)
        counters.set("key_log_max_secrets", self.max_entries)
        counters.set("key_log_lines", sources.lines_added, "added")
        counters.set("key_log_lines", sources.malformed_lines, "malformed")
        counters.set("key_log_connections_closed", sources.connections_evicted, "make_room")
        counters.set("key_log_connections_closed", sources.connections_idle, "idle")

    def source_totals(self) -> KeySourceStats:
        """All key sources' counters added up."""
        total = KeySourceStats()
        for stats in self.source_stats:
            total.lines_added += stats.lines_added
            total.malformed_lines += stats.malformed_lines
            total.connections_evicted += stats.connections_evicted
            total.connections_idle += stats.connections_idle
        return total

    def add_rsa_key(self, private_key: rsa.RSAPrivateKey, label: str) -> RsaKey:
        key = RsaKey(private_key, label)
        if key.modulus not in self._by_modulus:
            self.rsa_keys.append(key)
            self._by_modulus[key.modulus] = key
        self.generation += 1
        return self._by_modulus[key.modulus]

    def clear_rsa_keys(self) -> None:
        self.rsa_keys.clear()
        self._by_modulus.clear()

    def certificate_modulus(self, cert_der: bytes) -> int | None:
        """The RSA modulus of a certificate's public key, or None when it is not RSA."""
        if cert_der in self._cert_moduli:
            return self._cert_moduli[cert_der]
        modulus = rsa_modulus(cert_der)
        self._cert_moduli[cert_der] = modulus
        if len(self._cert_moduli) > self.CERT_CACHE:
            self._cert_moduli.popitem(last=False)
        return modulus

    def rsa_key_for_modulus(self, modulus: int) -> RsaKey | None:
        return self._by_modulus.get(modulus)

    def secrets_for(self, client_random: bytes) -> KeyLogSecrets | None:
        return self.by_client_random.get(client_random)
