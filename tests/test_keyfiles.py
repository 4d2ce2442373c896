"""Key files: passwords where needed, and no surprises where they are not."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from captagent_tls.keyfiles import KeyFileError, load_rsa_keys

KEY_FILE = Path(__file__).parent / "fixtures" / "keys" / "server-rsa2048.key"


def no_prompt(_path: str) -> None:
    return None


def fixture_key():
    return serialization.load_pem_private_key(KEY_FILE.read_bytes(), None)


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_a_wrong_password_that_passes_the_padding_check_is_still_a_wrong_password(tmp_path):
    # about one wrong password in 256 decrypts to valid CBC padding and fails in the parse
    pem = fixture_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"right"),
    )
    for attempt in range(20_000):
        wrong = f"wrong{attempt}".encode()
        try:
            serialization.load_pem_private_key(pem, wrong)
        except ValueError as exc:
            if "password" not in str(exc).lower():
                break
    else:
        pytest.fail("no wrong password got past the padding check")
    path = write(tmp_path, "enc.key", pem)
    with pytest.raises(KeyFileError, match="wrong password"):
        load_rsa_keys(path, wrong, no_prompt)
    assert len(load_rsa_keys(path, b"right", no_prompt)) == 1


def test_an_encrypted_key_asks_for_its_password(tmp_path):
    pem = fixture_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"right"),
    )
    path = write(tmp_path, "enc.key", pem)
    asked = []
    assert len(load_rsa_keys(path, None, lambda p: asked.append(p) or b"right")) == 1
    assert asked == [path]
    with pytest.raises(KeyFileError, match="--key-password"):
        load_rsa_keys(path, None, no_prompt)


@pytest.mark.parametrize("encoding", ["pem", "der", "pkcs12"])
def test_a_password_for_a_key_without_one_is_not_an_error(tmp_path, encoding):
    # one --key-password for several key files, only some of them encrypted
    key = fixture_key()
    if encoding == "pkcs12":
        data = pkcs12.serialize_key_and_certificates(
            b"k", key, None, None, serialization.NoEncryption()
        )
    else:
        data = key.private_bytes(
            serialization.Encoding.PEM if encoding == "pem" else serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    path = write(tmp_path, f"plain.{encoding}", data)
    [loaded] = load_rsa_keys(path, b"unused", no_prompt)
    assert loaded.private_numbers() == key.private_numbers()


def test_garbage_is_not_a_key_file(tmp_path):
    with pytest.raises(KeyFileError, match="not a private key file"):
        load_rsa_keys(write(tmp_path, "x.key", b"\x30\x03abcdefgh"), b"pw", no_prompt)


@pytest.mark.parametrize("encoding", ["pem", "der"])
def test_a_key_whose_parts_do_not_fit_together_is_refused_with_one_line(tmp_path, encoding):
    """Keys load without OpenSSL's slow full check; a round trip stands in for it."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    good = rsa.generate_private_key(65537, 2048).private_numbers()
    broken = rsa.RSAPrivateNumbers(
        good.p,
        good.q,
        good.d ^ (1 << 100),  # a wrong private exponent: every decryption comes out wrong
        good.dmp1 ^ 2,
        good.dmq1 ^ 2,
        good.iqmp,
        good.public_numbers,
    ).private_key(unsafe_skip_rsa_key_validation=True)
    path = tmp_path / f"broken.{encoding}"
    path.write_bytes(
        broken.private_bytes(
            serialization.Encoding.PEM if encoding == "pem" else serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyFileError, match="inconsistent"):
        load_rsa_keys(str(path))
    fine = tmp_path / f"fine.{encoding}"
    fine.write_bytes(
        good.private_key().private_bytes(
            serialization.Encoding.PEM if encoding == "pem" else serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert len(load_rsa_keys(str(fine))) == 1
