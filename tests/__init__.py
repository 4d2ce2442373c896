"""The test suite (a package, so that bench/ and fuzz/ share its support code and fixtures
without sys.path edits: run them as ``python -m bench.run``, ``python -m fuzz.run``)."""
