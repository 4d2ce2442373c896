"""The cipher-suite table: names and parameters."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from captagent_tls.tls.suites import all_suites, lookup


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_every_name_is_the_one_tshark_knows_for_its_code_point():
    proc = subprocess.run(["tshark", "-G", "values"], capture_output=True, text=True, check=True)
    theirs = {}
    for line in proc.stdout.splitlines():
        fields = line.split("\t")
        if fields[:2] == ["V", "tls.handshake.ciphersuite"]:
            theirs[int(fields[2])] = fields[3].strip()
    ours = all_suites()
    assert len(ours) > 200
    assert {s.code: s.name for s in ours} == {s.code: theirs.get(s.code) for s in ours}


@pytest.mark.parametrize(
    ("code", "kind", "key_len", "mac_len", "prf", "supported"),
    [
        (0x002F, "cbc", 16, 20, "sha256", True),  # RSA AES_128_CBC_SHA
        (0x003D, "cbc", 32, 32, "sha256", True),  # RSA AES_256_CBC_SHA256
        (0x009D, "aead", 32, 0, "sha384", True),  # RSA AES_256_GCM_SHA384
        (0xC0A0, "aead", 16, 0, "sha256", True),  # RSA AES_128_CCM_8
        (0xCCA8, "aead", 32, 0, "sha256", True),  # ECDHE_RSA CHACHA20_POLY1305
        (0x1302, "aead", 32, 0, "sha384", True),  # TLS 1.3 AES_256_GCM_SHA384
        (0x0002, "null", 0, 20, "sha256", True),  # RSA NULL_SHA
        (0xC051, "aead", 32, 0, "sha384", False),  # RSA ARIA_256_GCM: no such mode in pyca
        (0x0003, "stream", 5, 16, "sha256", False),  # export RC4_40
    ],
)
def test_parameters_come_from_the_name(code, kind, key_len, mac_len, prf, supported):
    suite = lookup(code)
    assert (suite.kind, suite.key_len, suite.mac_len, suite.prf_hash, suite.supported) == (
        kind,
        key_len,
        mac_len,
        prf,
        supported,
    )
