"""Every input that ever broke captagent-tls, replayed: the reproducers shared by the security
review and everything our fuzzing found (tests/data/regressions/INDEX.md lists them, why
they broke, and with which arguments they run).

A capture or config reproducer runs the command line as a user would.  It must end without a
traceback, with the exit status INDEX.md gives (1 only with one clear ``error:`` line), and
emit nothing that was never sent: no forbidden text (``HACKED``: a message altered by whoever
altered the packets; ``NULL_SHA``: ciphertext reported as NULL-cipher plaintext), and, when the
capture was made from a fixture, every decrypted payload must be a piece of what that
fixture's peers sent (the fuzzer's oracle, :mod:`fuzz.oracle`, applied to the JSON output).

A parser reproducer (``fuzz/TARGET/NAME.bin``) is replayed through that fuzz target's own
``one_input``: the product's parser plus the target's oracle, without atheris.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.cli import payload_bytes, run
from tests.support.paths import FIXTURES, REPO

REGRESSIONS = Path(__file__).resolve().parent / "data" / "regressions"

_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*`([^`]*)`\s*\|\s*([^|]+?)\s*\|\s*([^|]*?)\s*\|")


def index_rows() -> list[tuple[str, list[str], set[int], list[str], str | None]]:
    """(file, arguments, allowed exit codes, forbidden texts, fixture) per INDEX.md row.

    Row format: | `file` | `arguments (FILE = the file)` | exit | checks | ... where exit is
    ``0``, ``1`` or ``0 or 1`` and checks lists ``no TEXT`` and ``truth FIXTURE`` items."""
    rows = []
    for line in (REGRESSIONS / "INDEX.md").read_text().splitlines():
        match = _ROW.match(line)
        if not match:
            continue
        name, arguments, exits, checks = match.groups()
        codes = {int(code) for code in re.findall(r"\d+", exits)}
        forbidden = re.findall(r"no `([^`]+)`", checks)
        truth = re.search(r"truth `([^`]+)`", checks)
        rows.append((name, arguments.split(), codes, forbidden, truth.group(1) if truth else None))
    return rows


ROWS = index_rows()


def test_index_lists_every_reproducer():
    listed = {row[0].rstrip("/") for row in ROWS}
    listed |= {f"fuzz/{p.parent.name}/{p.name}" for p in (REGRESSIONS / "fuzz").glob("*/*.bin")}
    present = {
        p.name for p in REGRESSIONS.iterdir() if p.name not in ("INDEX.md", "support", "fuzz")
    }
    present |= {f"fuzz/{p.parent.name}/{p.name}" for p in (REGRESSIONS / "fuzz").glob("*/*.bin")}
    assert ROWS, "INDEX.md has no reproducer rows"
    assert present - listed == set(), "reproducers missing from INDEX.md"
    assert {r[0].rstrip("/") for r in ROWS} - present == set(), "INDEX.md rows without a file"
    text = (REGRESSIONS / "INDEX.md").read_text()
    for path in (REGRESSIONS / "fuzz").glob("*/*.bin"):
        assert f"fuzz/{path.parent.name}/{path.name}" in text


def _arguments(name: str, arguments: list[str]) -> list[str]:
    out = []
    for arg in arguments:
        if arg == "FILE":
            out.append(str(REGRESSIONS / name))
        elif arg.startswith("tests/"):
            out.append(str(REPO / arg))  # a fixture's key or key log
        elif arg.startswith(("support/", "fuzz/")) or arg.rstrip("/") in {
            r[0].rstrip("/") for r in ROWS
        }:
            out.append(str(REGRESSIONS / arg))
        else:
            out.append(arg)
    return out


def _sent_streams(fixture: str):
    from fuzz.truth import load_sent_streams

    return load_sent_streams(FIXTURES / f"{fixture}.json")[1]


@pytest.mark.parametrize(
    ("name", "arguments", "codes", "forbidden", "truth"),
    [pytest.param(*row, id=row[0]) for row in ROWS],
)
def test_reproducer_is_handled(name, arguments, codes, forbidden, truth):
    args = _arguments(name, arguments)
    if truth is not None and "--json" not in args:
        args.append("--json")
    proc = run(args, timeout=300)
    if "Traceback" in proc.stderr:
        pytest.fail(f"traceback: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode in codes, proc.stderr[-2000:]
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("captagent-tls: error:"), proc.stderr[-2000:]
    for text in forbidden:
        if text in proc.stdout:
            pytest.fail(f"the output holds {text!r}")
    if truth is not None:
        import json

        sent = _sent_streams(truth)
        for line in proc.stdout.splitlines():
            obj = json.loads(line)
            if obj["transport"] != "tls":
                continue
            client_port = obj["src_port"] if obj["direction"] == "c2s" else obj["dst_port"]
            server_port = obj["dst_port"] if obj["direction"] == "c2s" else obj["src_port"]
            payload = payload_bytes(obj)
            streams = sent.candidates(client_port, server_port, obj["direction"])
            if not any(payload in s for s in streams):
                pytest.fail(
                    f"{obj['kind']} {obj['direction']} message never sent: {payload[:80]!r}"
                )


PARSER_CASES = sorted((REGRESSIONS / "fuzz").glob("*/*.bin"))


@pytest.mark.parametrize(
    "path", [pytest.param(p, id=f"{p.parent.name}/{p.name}") for p in PARSER_CASES]
)
def test_parser_reproducer_is_handled(path: Path):
    import importlib

    target = importlib.import_module(f"fuzz.targets.{path.parent.name}")
    target.one_input(path.read_bytes())  # raises: the parser fails or its oracle does
