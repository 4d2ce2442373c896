"""Where the benchmarks read and write: the repository, bench/out, the fixtures' server key."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"  # captures and results (git-ignored)
FIXTURES = ROOT / "tests" / "fixtures"
KEYS_DIR = FIXTURES / "keys"
#: the server key of every capture the benchmarks record or read (``peers.SERVER_KEY``)
KEY = KEYS_DIR / "server-rsa2048.key"
