"""Load RSA private keys from files: PEM (PKCS#1, PKCS#8, encrypted, bundles with
certificates), DER, and PKCS#12.  Messages name the file, never the key material."""

from __future__ import annotations

import getpass
import os
import re
import sys
import warnings
from collections.abc import Callable
from functools import partial

from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import (
    load_der_private_key,
    load_pem_private_key,
)

from captagent_tls.errors import UserFacingError

_PEM_KEY = re.compile(
    rb"-----BEGIN ((?:RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY)-----.*?-----END \1-----", re.DOTALL
)


_ENCRYPTED_PEM = re.compile(rb"\A-----BEGIN ENCRYPTED|^Proc-Type: 4,ENCRYPTED", re.MULTILINE)


class KeyFileError(UserFacingError):
    """A key file cannot be used; the message says why, for the user."""


def _not_a_key_file(path: str) -> KeyFileError:
    return KeyFileError(f"{path}: not a private key file (PEM, DER or PKCS#12 could not be read)")


def _kind(key: object) -> str:
    name = type(key).__name__.replace("PrivateKey", "").lstrip("_")
    return {
        "EllipticCurve": "EC",
        "Ed25519": "Ed25519",
        "Ed448": "Ed448",
        "DSA": "DSA",
        "DH": "DH",
        "X25519": "X25519",
    }.get(name, name or "non-RSA")


def _password_prompt(path: str) -> bytes | None:
    if not sys.stdin.isatty():
        return None
    return getpass.getpass(f"password for {path}: ").encode()


def load_rsa_keys(
    path: str,
    password: bytes | None = None,
    prompt: Callable[[str], bytes | None] = _password_prompt,
) -> list[rsa.RSAPrivateKey]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    keys = _load(path, data, password, prompt)
    rsa_keys = [key for key in keys if isinstance(key, rsa.RSAPrivateKey)]
    if not rsa_keys:
        kind = _kind(keys[0]) if keys else "no"
        raise KeyFileError(
            f"{path} holds an {kind} private key, not RSA: it cannot decrypt TLS passively "
            "(only RSA key exchange can); use a key log (--keylog) instead"
        )
    for key in rsa_keys:
        _check_consistent(path, key)
    return rsa_keys


def _check_consistent(path: str, key: rsa.RSAPrivateKey) -> None:
    """The key's private half undoes its public half.

    Keys are loaded without OpenSSL's full RSA key check (``unsafe_skip_rsa_key_validation``):
    it tests p and q for primality, about 27 ms for an RSA-2048 key, which was a quarter of
    the agent's start-up.  Skipping it is safe here: the key is the operator's own file, we
    never sign with it (the check guards signatures against faults that leak the key), and a
    wrong pre-master secret cannot produce records that authenticate.  What the check would
    catch for decryption, a key whose parts do not fit together, this round trip catches in
    a quarter of a millisecond, with a clear message instead of sessions that never decrypt.
    """
    probe = os.urandom(48)
    try:
        encrypted = key.public_key().encrypt(probe, padding.PKCS1v15())
        fits = key.decrypt(encrypted, padding.PKCS1v15()) == probe
    except Exception:  # noqa: BLE001 - OpenSSL may refuse an inconsistent key in several ways
        fits = False
    if not fits:
        raise KeyFileError(
            f"{path}: the RSA key is inconsistent (its private part does not fit its public part)"
        )


def _load(
    path: str, data: bytes, password: bytes | None, prompt: Callable[[str], bytes | None]
) -> list[object]:
    blocks = [m.group(0) for m in _PEM_KEY.finditer(data)]
    if blocks:
        return [
            _unlock(
                path,
                password,
                prompt,
                _ENCRYPTED_PEM.search(block) is not None,
                partial(_load_pem, block),
            )
            for block in blocks
        ]
    if b"-----BEGIN" in data:
        raise KeyFileError(f"{path}: no private key in this PEM file (only certificates?)")
    try:
        return [_load_der(data, None)]
    except TypeError:  # an encrypted DER key
        return [_unlock(path, password, prompt, True, lambda pw: _load_der(data, pw))]
    except Exception:  # noqa: BLE001, S110 - not DER: try PKCS#12 next
        pass
    key = _load_pkcs12(path, data, password, prompt)
    if key is None:
        raise KeyFileError(f"{path}: the PKCS#12 file holds no private key")
    return [key]


def _load_pem(data: bytes, password: bytes | None) -> object:
    # the full RSA key check is replaced by _check_consistent (see there why)
    return load_pem_private_key(data, password, unsafe_skip_rsa_key_validation=True)


def _load_der(data: bytes, password: bytes | None) -> object:
    return load_der_private_key(data, password, unsafe_skip_rsa_key_validation=True)


def _load_pkcs12(
    path: str, data: bytes, password: bytes | None, prompt: Callable[[str], bytes | None]
) -> object:
    # imported here: it brings all of x509 (tens of ms of start-up) for this one format
    from cryptography.hazmat.primitives.serialization.pkcs12 import load_key_and_certificates

    def load(pw: bytes | None) -> object:
        with warnings.catch_warnings():
            # older tools write BER; pyca reads it and warns, which would only confuse here
            warnings.simplefilter("ignore", UserWarning)
            return load_key_and_certificates(data, pw)[0]

    # PKCS#12 does not say whether it has a password: pyca tells by how it fails
    try:
        return load(password)
    except ValueError as exc:
        if "password" not in str(exc).lower():
            raise _not_a_key_file(path) from None
    except Exception as exc:  # noqa: BLE001 - pyca raises several types for bad input
        raise KeyFileError(f"{path}: cannot load key: {exc}") from None
    if password is None:
        return _unlock(path, None, prompt, True, load)
    try:
        return load(None)  # a file without a password
    except ValueError:
        raise KeyFileError(f"{path}: wrong password") from None


def _unlock(
    path: str,
    password: bytes | None,
    prompt: Callable[[str], bytes | None],
    encrypted: bool,
    load: Callable[[bytes | None], object],
) -> object:
    """``load`` with the password an encrypted key needs, asked for if not given; a password
    given for a key without one is not used (pyca would refuse it)."""
    if not encrypted:
        password = None
    elif password is None:
        password = prompt(path)
        if password is None:
            raise KeyFileError(f"{path} is encrypted: give its password with --key-password")
    try:
        return load(password)
    except ValueError:
        if encrypted:
            # a wrong password usually fails the padding check, and otherwise the parse
            raise KeyFileError(f"{path}: wrong password") from None
        raise _not_a_key_file(path) from None
    except Exception as exc:  # noqa: BLE001 - pyca raises several types for bad input
        raise KeyFileError(f"{path}: cannot load key: {exc}") from None


def key_file_mode_warning(path: str) -> str | None:
    """A warning when a private key file can be read by group or others."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & 0o077:
        return (
            f"key file {path} is readable by group or others (mode {mode & 0o777:o}); chmod 600 it"
        )
    return None
