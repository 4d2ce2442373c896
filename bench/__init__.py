"""Benchmarks, run from the repository root as modules: ``python -m bench.run``,
``python -m bench.live``, ... (README.md here says what each measures)."""
