"""The RSA modulus of a certificate, read without cryptography.x509 (tls/certificate.py):
the same answer as x509 for real certificates, and None, never an exception, for anything
else the wire may carry."""

from __future__ import annotations

import datetime
import random

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from captagent_tls.tls.certificate import rsa_modulus, subject_public_key_info
from tests.support.paths import FIXTURE_KEYS

pytestmark = pytest.mark.unit


def certificate(key, signer=None) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sip.example.test")])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x1234567890ABCDEF)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("sip.example.test")]), False)
    )
    signer = signer or key
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer, algorithm).public_bytes(Encoding.DER)


RSA_KEY = rsa.generate_private_key(65537, 2048)


def test_an_rsa_certificate_gives_the_modulus_x509_gives():
    der = certificate(RSA_KEY)
    expected = x509.load_der_x509_certificate(der).public_key().public_numbers().n
    assert rsa_modulus(der) == expected == RSA_KEY.public_key().public_numbers().n


def test_the_fixture_servers_certificates_match_their_keys():
    checked = 0
    for cert_path in sorted(FIXTURE_KEYS.glob("*.crt")):
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        der = cert.public_bytes(Encoding.DER)
        public = cert.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            assert rsa_modulus(der) == public.public_numbers().n, cert_path.name
        else:
            assert rsa_modulus(der) is None, cert_path.name
        checked += 1
    assert checked, "no certificates among the fixtures' keys"


@pytest.mark.parametrize(
    "key",
    [ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate()],
    ids=["ecdsa", "ed25519"],
)
def test_a_certificate_of_another_key_type_is_not_rsa(key):
    der = certificate(key)
    assert subject_public_key_info(der) is not None
    assert rsa_modulus(der) is None


def test_an_rsa_key_in_a_certificate_signed_by_another_kind_of_key():
    der = certificate(RSA_KEY, signer=ec.generate_private_key(ec.SECP256R1()))
    assert rsa_modulus(der) == RSA_KEY.public_key().public_numbers().n


def test_every_truncation_and_corruption_gives_none_or_the_key_never_an_exception():
    der = certificate(RSA_KEY)
    modulus = RSA_KEY.public_key().public_numbers().n
    for cut in range(len(der)):
        assert rsa_modulus(der[:cut]) in (None, modulus)
    rng = random.Random(7)
    for _ in range(3000):
        damaged = bytearray(der)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        result = rsa_modulus(bytes(damaged))
        assert result is None or isinstance(result, int)
    for junk in (b"", b"\x30", b"\x30\x84\xff\xff\xff\xff", b"\x30\x80", b"\x30\x03\x30\x01"):
        assert rsa_modulus(junk) is None
