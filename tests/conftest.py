"""Shared pytest fixtures and paths for the captagent-tls tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.paths import CORPUS, FIXTURE_KEYS, FIXTURES, HEPJS_DIR, REPO

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


# -- markers: unit (seconds), slow (external tools, many subprocess runs), live (root) --------

# modules whose every test starts the agent or external tools (tshark, Chromium, Node,
# tcpdump, compilers) or runs many captures through the command line
SLOW_MODULES = frozenset(
    (
        "test_capture_loss.py",
        "test_cli.py",
        "test_cli_end_of_run.py",
        "test_conformance_corpus.py",
        "test_fixtures.py",
        "test_fuzz_regressions.py",
        "test_hep_hepjs.py",
        "test_hep_transport.py",
        "test_keylog_preload.py",
        "test_options_table.py",
        "test_report_html.py",
        "test_support_oracle.py",
        "test_tshark_crosscheck.py",
        "test_views_console.py",
        "test_views_progress.py",
        "test_websocket_fixtures.py",
        "test_write_decryptable.py",
        "test_bounds.py",
        "test_key_sources.py",
        "test_workers.py",
        "test_live_workers.py",
        "test_workers_files.py",
        "test_workers_outputs.py",
    )
)


def _captures_live(item: pytest.Item) -> bool:
    """Does the test capture on an interface (root, tcpdump, lo)?"""
    import inspect

    function = getattr(item, "function", None)
    if function is None:
        return False
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    module = getattr(item, "module", None)
    module_source = inspect.getsource(module) if module is not None else ""
    return (
        "require_live_capture(" in source
        or "needs_root_capture(" in source
        or "live_capture" in getattr(item, "fixturenames", ())
        or ('usefixtures("live_capture")' in module_source)
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: fast, in-process, no external tools (seconds)")
    config.addinivalue_line("markers", "slow: external tools or many runs of the command")
    config.addinivalue_line("markers", "live: captures on lo: needs root and tcpdump")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _captures_live(item):
            item.add_marker(pytest.mark.live)
            item.add_marker(pytest.mark.slow)
        elif item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
        else:
            item.add_marker(pytest.mark.unit)
