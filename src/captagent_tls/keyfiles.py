"""Load RSA private keys from files: PEM (PKCS#1, PKCS#8, encrypted, bundles with
certificates), DER, and PKCS#12.  Messages name the file, never the key material."""

from __future__ import annotations

import getpass
import os
import re
import sys
import warnings
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    load_der_private_key,
    load_pem_private_key,
    pkcs12,
)

_PEM_KEY = re.compile(
    rb"-----BEGIN ((?:RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY)-----.*?-----END \1-----", re.DOTALL
)


class KeyFileError(Exception):
    """A key file cannot be used; the message says why, for the user."""


def _kind(key: object) -> str:
    name = type(key).__name__.replace("PrivateKey", "").lstrip("_")
    return {"EllipticCurve": "EC", "Ed25519": "Ed25519", "Ed448": "Ed448", "DSA": "DSA",
            "DH": "DH", "X25519": "X25519"}.get(name, name or "non-RSA")


def _password_prompt(path: str) -> bytes | None:
    if not sys.stdin.isatty():
        return None
    return getpass.getpass(f"password for {path}: ").encode()


def load_rsa_keys(path: str, password: bytes | None = None,
                  prompt: Callable[[str], bytes | None] = _password_prompt
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
    return rsa_keys


def _load(path: str, data: bytes, password: bytes | None,
          prompt: Callable[[str], bytes | None]) -> list[object]:
    blocks = [m.group(0) for m in _PEM_KEY.finditer(data)]
    if blocks:
        return [_with_password(path, password, prompt,
                               lambda pw, b=block: load_pem_private_key(b, pw))
                for block in blocks]
    if b"-----BEGIN" in data:
        raise KeyFileError(f"{path}: no private key in this PEM file (only certificates?)")
    try:
        return [load_der_private_key(data, password)]
    except TypeError:
        return [_with_password(path, password, prompt,
                               lambda pw: load_der_private_key(data, pw))]
    except (ValueError, Exception):  # noqa: BLE001 - not DER: try PKCS#12 next
        pass
    def load_pkcs12(pw: bytes | None) -> object:
        with warnings.catch_warnings():
            # older tools write BER; pyca reads it and warns, which would only confuse here
            warnings.simplefilter("ignore", UserWarning)
            return pkcs12.load_key_and_certificates(data, pw)[0]

    key = _with_password(path, password, prompt, load_pkcs12, pkcs12_file=True)
    if key is None:
        raise KeyFileError(f"{path}: the PKCS#12 file holds no private key")
    return [key]


def _with_password(path: str, password: bytes | None, prompt: Callable[[str], bytes | None],
                   load: Callable[[bytes | None], object], pkcs12_file: bool = False) -> object:
    try:
        return load(password)
    except TypeError:
        # encrypted, and no password given
        asked = prompt(path)
        if asked is None:
            raise KeyFileError(f"{path} is encrypted: give its password with --key-password"
                               ) from None
        return _with_password(path, asked, lambda _p: None, load, pkcs12_file)
    except ValueError as exc:
        text = str(exc).lower()
        if "password" in text or "decrypt" in text or "mac" in text or (
            pkcs12_file and password is None
        ):
            if password is None:
                asked = prompt(path)
                if asked is not None:
                    return _with_password(path, asked, lambda _p: None, load, pkcs12_file)
                raise KeyFileError(f"{path} is encrypted: give its password with --key-password"
                                   ) from None
            raise KeyFileError(f"{path}: wrong password") from None
        kind = "PKCS#12" if pkcs12_file else "key"
        raise KeyFileError(f"{path}: not a private key file (PEM, DER or PKCS#12 {kind} "
                           "could not be read)") from None
    except Exception as exc:  # noqa: BLE001 - pyca raises several types for bad input
        raise KeyFileError(f"{path}: cannot load key: {exc}") from None


def key_file_mode_warning(path: str) -> str | None:
    """A warning when a private key file can be read by group or others."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & 0o077:
        return (f"key file {path} is readable by group or others (mode {mode & 0o777:o}); "
                "chmod 600 it")
    return None
