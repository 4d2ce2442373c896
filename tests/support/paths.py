"""Well-known folders used by the tests."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
SRC = REPO / "src"
# ../shared/corpus beside the checkout (read-only, may be absent in a bare clone).
CORPUS = REPO.parent / "shared" / "corpus"
FIXTURES = TESTS / "fixtures" / "captures"
FIXTURE_KEYS = TESTS / "fixtures" / "keys"
HEPJS_DIR = TESTS / "hepjs"
