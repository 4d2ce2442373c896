"""Folders the fuzzer reads and writes."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
FIXTURES = TESTS / "fixtures" / "captures"
FIXTURE_KEYS = TESTS / "fixtures" / "keys"
REGRESSIONS = TESTS / "data" / "regressions"
WORK = REPO / ".fuzz"  # default corpus and findings folders (not committed)
