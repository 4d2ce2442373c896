#!/usr/bin/env python3
"""What the views cost: the progress bar, the outputs next to another revision, the call-flow
report (time, size, how fast Chromium shows it) and the decryptable capture.

    python -m bench.views                        # bench/out/bulk.pcap (made by bench/run.py)
    python -m bench.views --compare main --runs 7

Every timed command is a fresh process (``python -m captagent_tls``); figures are the best of
N wall times and the median CPU time (user + sys), which a busy machine disturbs less.
Variants are run in turn (A B A B ...) so that a busy machine slows them alike.
``--compare REV`` also runs the console and ``--json`` outputs from ``src/`` of git revision
REV (exported to bench/out/compare-src).
Progress is measured with stderr on a pseudo-terminal, as a person would see it, and without.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pty
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from bench.paths import KEY, OUT, ROOT
from bench.processes import spawn_and_reap
from bench.revision import export_src
from tests.support.browser import FLAGS as BROWSER_FLAGS


@dataclass
class Timing:
    wall_s: float
    cpu_s: float


def run_once(args: list[str], src: Path, stderr_on_terminal: bool = False) -> Timing:
    env = dict(os.environ, PYTHONPATH=str(src))
    env.pop("NO_COLOR", None)
    argv = [sys.executable, "-m", "captagent_tls", *args]
    master = slave = -1
    drained: threading.Thread | None = None
    if stderr_on_terminal:
        master, slave = pty.openpty()

        def drain() -> None:
            with contextlib.suppress(OSError):
                while os.read(master, 65536):
                    pass

        drained = threading.Thread(target=drain, daemon=True)
        drained.start()
    with open(os.devnull, "wb") as devnull, tempfile.TemporaryFile() as err:
        code, wall, usage = spawn_and_reap(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=devnull,
            stderr=slave if stderr_on_terminal else err,
            env=env,
        )
        if stderr_on_terminal:
            os.close(slave)
            if drained is not None:
                drained.join(5)
            os.close(master)
        if code != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(args)} failed:\n{err.read().decode()[-2000:]}")
    return Timing(wall, usage.ru_utime + usage.ru_stime)


def best_of(
    variants: dict[str, tuple[list[str], Path, bool]], runs: int
) -> dict[str, list[Timing]]:
    results: dict[str, list[Timing]] = {name: [] for name in variants}
    for _ in range(runs):
        for name, (args, src, terminal) in variants.items():
            results[name].append(run_once(args, src, terminal))
    return results


def show(results: dict[str, list[Timing]]) -> dict[str, dict[str, object]]:
    summary = {}
    for name, timings in results.items():
        best = min(timings, key=lambda t: t.wall_s)
        cpu = statistics.median(t.cpu_s for t in timings)
        walls = ", ".join(f"{t.wall_s:.2f}" for t in timings)
        print(
            f"  {name:<38} {best.wall_s:6.2f} s wall (best)  {cpu:5.2f} s CPU (median)  "
            f"runs [{walls}]"
        )
        summary[name] = {
            "best_wall_s": best.wall_s,
            "median_cpu_s": cpu,
            "runs": [t.wall_s for t in timings],
            "cpu_runs": [t.cpu_s for t in timings],
        }
    return summary


def chromium_ready_ms(report: Path, fragment: str) -> dict[str, int]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return {}
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [
                chromium,
                *BROWSER_FLAGS,  # the same headless browser as the tests' DOM checks
                f"--user-data-dir={profile}",
                "--virtual-time-budget=30000",
                "--dump-dom",
                report.resolve().as_uri() + fragment,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        ).stdout
    found = {}
    for name in ("data-ready-ms", "data-drawn-ms"):
        match = re.search(rf'{name}="(\d+)"', dom)
        if match:
            found[name] = int(match.group(1))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capture", type=Path, default=OUT / "bulk.pcap")
    parser.add_argument("--key", type=Path, default=KEY)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compare", metavar="REV", help="also time this revision's outputs")
    args = parser.parse_args()
    if not args.capture.exists():
        raise SystemExit(f"{args.capture} is missing: run bench/run.py first (it records it)")
    base = ["-r", str(args.capture), "-k", str(args.key)]
    src = ROOT / "src"
    print(
        f"capture {args.capture} ({args.capture.stat().st_size / 1e6:.1f} MB), load "
        f"{os.getloadavg()[0]:.1f}, best of {args.runs}"
    )
    results: dict[str, object] = {}

    print("outputs (stdout to /dev/null, stderr not a terminal):")
    outputs: dict[str, tuple[list[str], Path, bool]] = {
        "console (work tree)": (base, src, False),
        "--json (work tree)": ([*base, "--json"], src, False),
    }
    if args.compare:
        other = export_src(args.compare, OUT / "compare-src")
        outputs[f"console ({args.compare})"] = (base, other, False)
        outputs[f"--json ({args.compare})"] = ([*base, "--json"], other, False)
    results["outputs"] = show(best_of(outputs, args.runs))

    print("progress (stderr on a pseudo-terminal):")
    results["progress"] = show(
        best_of(
            {
                "--json, progress bar": ([*base, "--json"], src, True),
                "--json, --no-progress": ([*base, "--json", "--no-progress"], src, True),
            },
            args.runs,
        )
    )

    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        report = Path(tmp) / "calls.html"
        pcapng = Path(tmp) / "decryptable.pcapng"
        print("files:")
        results["files"] = show(
            best_of(
                {
                    "--report calls.html": ([*base, "--report", str(report)], src, False),
                    "--write-decryptable FILE.pcapng": (
                        [*base, "--write-decryptable", str(pcapng)],
                        src,
                        False,
                    ),
                },
                max(1, args.runs // 2),
            )
        )
        calls = json.loads(report.read_text().split('id="meta">', 1)[1].split("<")[0])
        first_call = json.loads(
            report.read_text().split('id="calls">', 1)[1].split("</script>", 1)[0]
        )[0][0]
        sizes = {
            "report_bytes": report.stat().st_size,
            "report_calls": calls["calls"],
            "report_messages": calls["messages"],
            "pcapng_bytes": pcapng.stat().st_size,
            "capture_bytes": args.capture.stat().st_size,
        }
        print(
            f"  report: {sizes['report_bytes'] / 2**20:.1f} MiB for {calls['calls']} calls, "
            f"{calls['messages']} messages; decryptable pcapng "
            f"{sizes['pcapng_bytes'] / 2**20:.1f} MiB (capture "
            f"{sizes['capture_bytes'] / 2**20:.1f} MiB)"
        )
        listing = chromium_ready_ms(report, "")
        ladder = chromium_ready_ms(report, "#call=" + first_call)
        if listing:
            print(
                f"  Chromium: list shown {listing.get('data-ready-ms')} ms after navigation "
                f"began; with a ladder {ladder.get('data-ready-ms')} ms (ladder and the "
                f"messages' JSON: {ladder.get('data-drawn-ms')} ms)"
            )
        results["files_sizes"] = sizes
        results["chromium"] = {"list": listing, "ladder": ladder}
    (OUT / "views-results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"results in {OUT / 'views-results.json'}")


if __name__ == "__main__":
    main()
