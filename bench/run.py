#!/usr/bin/env python3
"""Throughput and handshake benchmark for captagent-tls, against tshark and the RSA ceiling.

    python -m bench.run [--out bench/out] [--reuse] [--quick] [--runs 3] [--tshark-runs 1]

Needs root, tcpdump and tshark (captures are recorded on loopback by
``tests/fixtures/peers.py``).  See bench/README.md for what is measured and
the caveats.  The exit status is non-zero only when an output is wrong
(message counts or payloads differ from the ground truth, or a tool fails);
a missed performance target is reported, never fatal.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from bench import captures, report, revision
from bench.agent_runs import time_ours_hep, time_ours_json, time_startup, time_workers
from bench.paths import OUT
from bench.processes import loadavg, use_gnu_time
from bench.rsa_ceiling import RsaCeiling
from bench.stats import WrongOutput
from bench.tshark import time_tshark
from bench.verify import verify_ours


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out",
        type=Path,
        default=OUT,
        help="captures and results (default bench/out, git-ignored)",
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="reuse captures in --out when their ground truth matches the sizes",
    )
    ap.add_argument(
        "--quick", action="store_true", help="small captures (smoke run); files are prefixed quick-"
    )
    ap.add_argument("--runs", type=int, default=3, help="runs of our agent (best of N)")
    ap.add_argument("--tshark-runs", type=int, default=1, help="runs of tshark (best of N)")
    ap.add_argument("--only", choices=("bulk", "handshakes"), help="run one benchmark only")
    ap.add_argument(
        "--rev",
        metavar="REV",
        help="measure src/ of this git revision (exported to OUT/rev-src) instead of the "
        "work tree, e.g. HEAD while src/ is being edited",
    )
    ap.add_argument("--no-tshark", action="store_true", help="skip tshark")
    ap.add_argument("--no-hep", action="store_true", help="skip the --hep runs")
    ap.add_argument(
        "--workers",
        default="1,2",
        help="bulk: also time --json with each of these worker counts (default 1,2; '' for none)",
    )
    ap.add_argument(
        "--keep-output",
        action="store_true",
        help="keep our JSON lines from the verification run in --out",
    )
    args = ap.parse_args(argv)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    sizes, prefix = captures.sizes_and_prefix(args.quick)
    kinds = [args.only] if args.only else ["bulk", "handshakes"]
    started = time.perf_counter()
    rev = revision.use_rev(args.rev, out)
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "runs": args.runs,
        "tshark_runs": 0 if args.no_tshark else args.tshark_runs,
        "machine": report.machine_info(),
        "agent": " ".join(revision.agent_cmd()),
        "source": revision.source(rev),
        "peak_rss_via": "GNU time %M" if use_gnu_time() else "os.wait4 (upper bound)",
        "targets": {
            "bulk_tshark_over_ours_min": report.TARGET_TSHARK_RATIO,
            "bulk_peak_rss_mb_max": report.TARGET_RSS_MB,
            "handshakes_ceiling_over_ours_min": report.TARGET_CEILING_RATIO,
        },
    }
    failures: list[str] = []

    # 1. captures (recorded before anything is timed)
    gts: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        gt, gen = captures.make_capture(out, prefix + kind, kind, sizes[kind], args.reuse)
        gts[kind] = gt
        results[kind] = {
            "capture": {
                **gen,
                **sizes[kind],
                "messages_truth": len(gt["messages"]),
                "connections_truth": len(gt["connections"]),
            }
        }

    table = report.Table()
    # 2.-4. timings
    with contextlib.suppress(OSError):
        results["machine"]["loadavg_before_timing"] = loadavg()
    try:
        startup = results["ours_startup"] = time_startup(out, args.runs)
    except WrongOutput as exc:
        failures.append(f"start-up: {exc}")
        startup = None
    else:
        print(
            f"[start-up] ours on an empty capture: {startup['best_s']:.2f} s, "
            f"{startup['peak_rss_mb']:.1f} MB",
            flush=True,
        )
    for kind in kinds:
        gt = gts[kind]
        pcap, _ = captures.capture_paths(out, prefix + kind)
        expected = len(gt["messages"])
        res = results[kind]
        print(
            f"[{kind}] {pcap.name}: {expected} SIP messages, {len(gt['connections'])} connections",
            flush=True,
        )
        try:
            t0 = time.perf_counter()
            res["verify"] = verify_ours(pcap, gt, out, args.keep_output)
            print(
                f"    verification run: {res['verify']['sip_messages']} SIP messages match "
                f"the ground truth (payloads, directions, Call-IDs) "
                f"[{time.perf_counter() - t0:.1f} s]",
                flush=True,
            )
            ceiling = None
            if kind == "handshakes":
                ceiling = RsaCeiling(sum(1 for c in gt["connections"] if not c["reused"]))
            res["ours_json"] = time_ours_json(pcap, expected, args.runs, ceiling)
            if not args.no_hep:
                res["ours_hep"] = time_ours_hep(pcap, expected, args.runs)
            counts = [int(x) for x in args.workers.split(",") if x.strip()]
            if kind == "bulk" and counts:
                res["workers"] = time_workers(pcap, expected, args.runs, counts)
        except WrongOutput as exc:
            failures.append(f"{kind}: {exc}")
            print(f"    WRONG OUTPUT: {exc}", flush=True)
            continue
        if ceiling is not None:
            res["rsa_ceiling"] = ceiling.result()
        if not args.no_tshark and args.tshark_runs > 0:
            res["tshark"] = time_tshark(pcap, gt, args.tshark_runs, out)

        report.judge_capture(table, kind, pcap, gt, res, args.runs, startup)

    results["total_s"] = round(time.perf_counter() - started, 1)
    results["failures"] = failures
    name = "results-quick.json" if args.quick else "results.json"
    report.write_results(out / name, results)
    report.print_run_summary(results, table, kinds, args.quick, out / name)
    return report.exit_status(failures)


if __name__ == "__main__":
    sys.exit(main())
