"""The public key of an X.509 certificate, for matching RSA private keys to servers.

Only the SubjectPublicKeyInfo is needed, and pyca/cryptography's ``load_der_public_key``
reads it; what this module does is find it in the certificate's DER (RFC 5280, 4.1): the
seventh element of the TBSCertificate, or the sixth when the optional version is absent.
Importing ``cryptography.x509`` for this would cost about 13 ms of start-up (a third of the
agent's own imports), for one field.  The certificate comes from the wire: every length is
checked against what is there, and anything that is not as RFC 5280 lays it out is None.
"""

from __future__ import annotations

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa

SEQUENCE = 0x30
VERSION = 0xA0  # [0] EXPLICIT Version
BEFORE_KEY = 5  # serialNumber, signature, issuer, validity, subject


def _element(der: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """The element at ``pos``: its tag, where its contents start and where it ends."""
    if pos + 2 > end:
        raise ValueError("truncated")
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4 or pos + count > end:
            raise ValueError("bad length")
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    if pos + length > end:
        raise ValueError("truncated")
    return tag, pos, pos + length


def subject_public_key_info(cert_der: bytes) -> bytes | None:
    """The DER of the certificate's SubjectPublicKeyInfo, or None."""
    try:
        tag, start, end = _element(cert_der, 0, len(cert_der))
        if tag != SEQUENCE:
            return None
        tag, pos, end = _element(cert_der, start, end)  # TBSCertificate
        if tag != SEQUENCE:
            return None
        tag, _, after = _element(cert_der, pos, end)
        if tag == VERSION:
            pos = after
        for _ in range(BEFORE_KEY):
            _, _, pos = _element(cert_der, pos, end)
        tag, _, after = _element(cert_der, pos, end)
    except ValueError:
        return None
    return cert_der[pos:after] if tag == SEQUENCE else None


def rsa_modulus(cert_der: bytes) -> int | None:
    """The RSA modulus of the certificate's public key; None for another kind of key, or
    for bytes that are not a certificate."""
    spki = subject_public_key_info(cert_der)
    if spki is None:
        return None
    # imported here: runs with key logs alone never need it
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    try:
        public_key = load_der_public_key(spki)
    except (ValueError, UnsupportedAlgorithm):
        return None
    return public_key.public_numbers().n if isinstance(public_key, rsa.RSAPublicKey) else None
