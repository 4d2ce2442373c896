"""One target under atheris/libFuzzer, in its own process (started by :mod:`fuzz.run`).

    python -m fuzz.harness TARGET --findings DIR --hits FILE -- [libFuzzer options] [CORPUS...]

The product (``captagent_tls``) is imported under atheris' instrumentation, so libFuzzer is
guided by coverage of the product's code.  A failing input does not stop the run: it is
saved as a finding (once per distinct failure, see :mod:`fuzz.findings`) and fuzzing goes
on, so a long run reports every distinct failure it meets.  Hangs, memory blow-ups and
crashes of the interpreter itself are left to libFuzzer (``-timeout``, ``-rss_limit_mb``),
which stops and leaves its own artifact; the runner records it and starts again.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from types import ModuleType

from fuzz import findings
from fuzz.oracle import OracleFailure


class Guard:
    """The function libFuzzer calls: runs the target, turns failures into findings."""

    def __init__(self, name: str, module: ModuleType, root: Path, hits: Path | None):
        self.name = name
        self.module = module
        self.root = root
        self.hits = hits
        self.seen: set[str] = set()
        self.smallest: dict[str, int] = {}  # signature -> size of the input kept
        self.slow_limit = float(getattr(module, "SLOW_SECONDS", 10.0))

    def _extra(self, data: bytes) -> dict[str, bytes]:
        artifacts = getattr(self.module, "artifacts", None)
        if artifacts is None:
            return {}
        try:
            return dict(artifacts(data))
        except Exception as exc:  # the finding matters more than its attachments
            return {"artifacts-error.txt": repr(exc).encode()}

    def _record(self, finding: findings.Finding, data: bytes) -> None:
        if len(data) >= self.smallest.get(finding.signature, 1 << 62):
            return  # (a finding met again: only a smaller input is worth keeping)
        self.smallest[finding.signature] = len(data)
        finding.extra = self._extra(data)
        folder, new = findings.save(finding, self.root)
        if finding.signature in self.seen:
            return
        self.seen.add(finding.signature)
        if self.hits is not None:
            findings.record_hit(self.hits, self.name, finding, new, folder)
        print(
            f"\n{'NEW ' if new else ''}FINDING {self.name}/{finding.signature}: "
            f"{finding.summary} [{finding.location}]",
            file=sys.stderr,
            flush=True,
        )

    def __call__(self, data: bytes) -> None:
        start = time.perf_counter()
        try:
            self.module.one_input(data)
        except Exception as exc:
            context = ""
            if isinstance(exc, OracleFailure) and hasattr(self.module, "context"):
                try:
                    context = self.module.context(data)
                except Exception:
                    context = "?"
            self._record(findings.from_exception(self.name, exc, data, context), data)
        seconds = time.perf_counter() - start
        if seconds > self.slow_limit:
            self._record(findings.slow(self.name, seconds, data, self.slow_limit), data)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m fuzz.harness")
    parser.add_argument("target")
    parser.add_argument("--findings", type=Path, required=True)
    parser.add_argument("--hits", type=Path)
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    libfuzzer = argv[split + 1 :]

    import atheris

    with atheris.instrument_imports(include=["captagent_tls"]):
        module = importlib.import_module(f"fuzz.targets.{args.target}")
    warm_up = getattr(module, "warm_up", None)
    if warm_up is not None:
        warm_up()  # load the seeds before libFuzzer starts the clock per input
    guard = Guard(args.target, module, args.findings, args.hits)
    atheris.Setup([sys.argv[0], *libfuzzer], guard)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
