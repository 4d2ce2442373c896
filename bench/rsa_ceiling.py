"""The RSA ceiling of the handshake capture: what RSA alone costs, as fast as pyca/cryptography
does it on this machine; no agent that uses the same library can do the handshakes faster on
one core."""

from __future__ import annotations

import os
import time
from typing import Any

from bench.paths import KEY


class RsaCeiling:
    """``count`` bare RSA-2048 PKCS#1 v1.5 decryptions of 48-byte pre-master
    secrets encrypted to the server key, timed in this process.  One pass runs
    right after each of our timed ``--json`` runs on the handshake capture, so
    both see about the same machine load; the best pass counts."""

    def __init__(self, count: int) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import padding

        self.key = serialization.load_pem_private_key(KEY.read_bytes(), password=None)
        pub = self.key.public_key()
        self.pad = padding.PKCS1v15()
        self.pms = [b"\x03\x03" + os.urandom(46) for _ in range(count)]
        self.cts = [pub.encrypt(p, self.pad) for p in self.pms]
        self.times: list[float] = []
        if [self.key.decrypt(ct, self.pad) for ct in self.cts] != self.pms:
            raise RuntimeError("RSA ceiling: decryption gave wrong pre-master secrets")

    def run(self) -> float:
        decrypt, pad = self.key.decrypt, self.pad
        t0 = time.perf_counter()
        for ct in self.cts:
            decrypt(ct, pad)
        t = time.perf_counter() - t0
        self.times.append(t)
        print(f"    RSA ceiling  run {len(self.times)}: {t:8.2f} s", flush=True)
        return t

    def result(self) -> dict[str, Any]:
        best = min(self.times)
        return {
            "decryptions": len(self.cts),
            "key_bits": self.key.key_size,
            "best_s": round(best, 3),
            "runs_s": [round(t, 3) for t in self.times],
            "per_op_ms": round(best / len(self.cts) * 1000, 3),
        }
