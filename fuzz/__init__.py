"""Fuzzing captagent-tls: atheris targets for each parser and for the whole offline pipeline.

``python -m fuzz.run --help`` runs them; README.md ("Fuzzing") says how to run a long
campaign.  The oracle of the pipeline target is described in :mod:`fuzz.oracle`.
"""

import sys
from pathlib import Path

# The fixtures' ground truth is read by the tests' own reader (tests/support), so that the
# fuzzer and the tests cannot disagree about what was sent.
_TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
