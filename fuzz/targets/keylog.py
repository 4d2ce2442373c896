"""tls/keylog.py: NSS key log text into a ``KeyStore``.

Input: bytes, decoded as the command line reads a key log file (UTF-8, undecodable bytes
replaced).

Oracle: no exception; every line is counted once (a secret added, a blank or comment line,
or a malformed line); the secrets stored have the sizes their labels call for.
"""

from __future__ import annotations

from captagent_tls.tls.keylog import load_key_log
from captagent_tls.tls.keys import KeyStore
from fuzz import mutate
from fuzz.oracle import OracleFailure

MAX_LEN = 4096


def one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    keys = KeyStore()
    result = load_key_log(text, keys)
    lines = text.splitlines()
    ignored = sum(1 for line in lines if not line.strip() or line.strip().startswith("#"))
    if result.added + result.malformed + ignored != len(lines):
        raise OracleFailure(
            "keylog-count",
            f"{len(lines)} lines: {result.added} added, "
            f"{result.malformed} malformed, {ignored} ignored",
        )
    if result.malformed_lines:
        result.describe_malformed()
    for random, secrets in keys.by_client_random.items():
        if len(random) != 32:
            raise OracleFailure("keylog-random", f"client random of {len(random)} bytes")
        if secrets.master_secret is not None and len(secrets.master_secret) != 48:
            raise OracleFailure("keylog-master", f"{len(secrets.master_secret)} bytes")
        if any(len(s) not in (32, 48, 64) for s in secrets.tls13.values()):
            raise OracleFailure("keylog-tls13", "a TLS 1.3 secret of an odd size")
    for prefix, pre_master in keys.pms_by_encrypted_prefix.items():
        if len(prefix) != 8 or len(pre_master) != 48:
            raise OracleFailure("keylog-rsa", "an RSA line of the wrong sizes")
    for session_id, master in keys.master_by_session_id.items():
        if not 1 <= len(session_id) <= 32 or len(master) != 48:
            raise OracleFailure("keylog-session", "a session line of the wrong sizes")


def seeds() -> list[bytes]:
    out = [(s.keylog or "").encode()[:MAX_LEN] for s in mutate.seeds() if s.keylog]
    out.append(
        b"# comment\n\nRSA 0102030405060708 " + b"ab" * 48 + b"\n"
        b"RSA Session-ID:" + b"cd" * 32 + b" Master-Key:" + b"ef" * 48 + b"\n"
        b"PMS_CLIENT_RANDOM " + b"01" * 32 + b" " + b"02" * 100 + b"\r\n"
    )
    return out
