"""Shared pytest fixtures and paths for the captagent-tls tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.paths import CORPUS, FIXTURE_KEYS, FIXTURES, HEPJS_DIR, REPO

__all__ = ["CORPUS", "FIXTURES", "FIXTURE_KEYS", "HEPJS_DIR", "REPO"]


@pytest.fixture(scope="session")
def corpus() -> Path:
    """``../shared/corpus`` beside the checkout; skips cleanly when it is absent."""
    if not CORPUS.is_dir():
        pytest.skip(f"shared corpus not found at {CORPUS}")
    return CORPUS


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``tests/fixtures/captures``; skips when the project's own fixtures are absent."""
    if not FIXTURES.is_dir() or not any(FIXTURES.iterdir()):
        pytest.skip(f"no fixture captures in {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        pytest.skip("tshark is not installed")
    return path
