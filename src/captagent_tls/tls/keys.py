"""Key material the decryptor may use: RSA private keys (matched to servers by the public key in
their certificate) and secrets from NSS key logs.  Reading key files is the edges' job; this
module holds loaded objects and answers lookups.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import padding, rsa

PMS_LENGTH = 48


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


@dataclass
class KeyLogSecrets:
    """Secrets from a key log for one client random."""

    master_secret: bytes | None = None
    pre_master: bytes | None = None
    tls13: dict[str, bytes] = field(default_factory=dict)


class KeyStore:
    """Everything we can decrypt with.  Lookups are by certificate, client random, encrypted
    pre-master prefix, or session ID.
    """

    CERT_CACHE = 1024

    def __init__(self) -> None:
        self.rsa_keys: list[RsaKey] = []
        self._by_modulus: dict[int, RsaKey] = {}
        self._cert_moduli: OrderedDict[bytes, int | None] = OrderedDict()
        self.by_client_random: dict[bytes, KeyLogSecrets] = {}
        self.pms_by_encrypted_prefix: dict[bytes, bytes] = {}
        self.master_by_session_id: dict[bytes, bytes] = {}
        self.generation = 0  # bumped whenever secrets are added, so waiting flows can retry

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
        try:
            public_key = x509.load_der_x509_certificate(cert_der).public_key()
        except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion):
            # from the wire, so anything: not a certificate whose RSA key we could match
            modulus = None
        else:
            modulus = (public_key.public_numbers().n
                       if isinstance(public_key, rsa.RSAPublicKey) else None)
        self._cert_moduli[cert_der] = modulus
        if len(self._cert_moduli) > self.CERT_CACHE:
            self._cert_moduli.popitem(last=False)
        return modulus

    def rsa_key_for_modulus(self, modulus: int) -> RsaKey | None:
        return self._by_modulus.get(modulus)

    def secrets_for(self, client_random: bytes) -> KeyLogSecrets | None:
        return self.by_client_random.get(client_random)
