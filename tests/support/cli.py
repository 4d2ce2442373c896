"""Run the product CLI (``python -m captagent_tls``) as a subprocess.

The ``--json`` contract: one object per line with

    ts (float epoch seconds), src_ip, src_port, dst_ip, dst_port, transport ("tls"),
    direction ("c2s" | "s2c"), tls_version (e.g. "TLSv1.2"),
    cipher_suite (IANA name, e.g. "TLS_RSA_WITH_AES_128_GCM_SHA256"),
    kind ("sip" | "raw"), call_id (str | null),
    payload (str) -- or payload_b64 when the bytes are not UTF-8.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from .paths import SRC

JSON_KEYS = frozenset(
    {
        "ts", "src_ip", "src_port", "dst_ip", "dst_port", "transport", "direction",
        "tls_version", "cipher_suite", "kind", "call_id",
    }
)  # fmt: skip


class CliError(AssertionError):
    """The product exited with a non-zero status."""

    def __init__(self, args: Sequence[str], proc: subprocess.CompletedProcess[str]) -> None:
        self.proc = proc
        super().__init__(
            f"captagent_tls {' '.join(map(str, args))} exited with {proc.returncode}\n"
            f"--- stderr ---\n{proc.stderr.strip()[-4000:]}"
        )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Run the checkout's package even when it is not installed.
    parts = [str(SRC)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run(
    args: Sequence[str | os.PathLike[str]], *, timeout: float = 300, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """``python -m captagent_tls ARGS``; stdout/stderr captured as text."""
    argv = [sys.executable, "-m", "captagent_tls", *map(os.fspath, args)]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and proc.returncode != 0:
        raise CliError(argv[3:], proc)
    return proc


def run_json(
    args: Sequence[str | os.PathLike[str]], *, timeout: float = 300
) -> list[dict[str, Any]]:
    """Run with ``--json`` and return the parsed objects; raises CliError on a non-zero exit."""
    proc = run([*args, "--json"], timeout=timeout, check=True)
    out: list[dict[str, Any]] = []
    for n, line in enumerate(proc.stdout.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"--json output line {n} is not JSON: {line[:200]!r}") from exc
        if not isinstance(obj, dict):
            raise AssertionError(f"--json output line {n} is not an object: {line[:200]!r}")
        out.append(obj)
    return out


def key_args(keys: Sequence[str | os.PathLike[str]]) -> list[str]:
    """``-k KEY`` once per RSA key file."""
    out: list[str] = []
    for key in keys:
        out += ["-k", os.fspath(key)]
    return out


def payload_bytes(obj: dict[str, Any]) -> bytes:
    """The message bytes of one ``--json`` object (``payload`` or ``payload_b64``)."""
    if obj.get("payload_b64") is not None:
        return base64.b64decode(obj["payload_b64"], validate=True)
    payload = obj.get("payload")
    if not isinstance(payload, str):
        raise AssertionError(f"object has neither payload nor payload_b64: {sorted(obj)}")
    return payload.encode("utf-8")


def received(out: Iterable[dict[str, Any]]) -> Counter[tuple[int, str, bytes]]:
    """Multiset of (client port, direction, payload) of ``--json`` objects."""
    found: Counter[tuple[int, str, bytes]] = Counter()
    for obj in out:
        client_port = obj["src_port"] if obj["direction"] == "c2s" else obj["dst_port"]
        found[(client_port, obj["direction"], payload_bytes(obj))] += 1
    return found


def check_contract(obj: dict[str, Any]) -> None:
    """Assert that one ``--json`` object follows the contract above."""
    missing = JSON_KEYS - obj.keys()
    assert not missing, f"missing keys {sorted(missing)} in {sorted(obj)}"
    has_text = isinstance(obj.get("payload"), str)
    has_b64 = isinstance(obj.get("payload_b64"), str)
    assert has_text != has_b64, f"need exactly one of payload / payload_b64: {sorted(obj)}"
    assert isinstance(obj["ts"], int | float)
    assert isinstance(obj["src_port"], int) and isinstance(obj["dst_port"], int)
    assert obj["transport"] == "tls"
    assert obj["direction"] in ("c2s", "s2c")
    assert obj["kind"] in ("sip", "raw")
    assert obj["call_id"] is None or isinstance(obj["call_id"], str)
    payload_bytes(obj)
