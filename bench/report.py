"""The results: the performance targets, the tables and summaries run.py and live.py print,
the machine they ran on, and the results files and exit status every benchmark ends with."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import revision
from bench.captures import mb
from bench.processes import loadavg
from bench.tshark import tshark_version

# Performance targets (they live here, not in the tests).
TARGET_TSHARK_RATIO = 15.0  # bulk: tshark time / our time >=
TARGET_RSS_MB = 150.0  # bulk: our peak RSS <
TARGET_CEILING_RATIO = 0.85  # handshakes: RSA ceiling time / our time >=
TARGET_MSGS_PER_CORE = 50_000  # live: SIP messages/s decrypted and shipped per core, zero drops
KEPT_UP_LAG_S = 0.5  # live, "kept up": the last message left at most this long after the replay


@dataclass
class Table:
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, name: str, value: str, note: str = "") -> None:
        self.rows.append((name, value, note))

    def render(self) -> str:
        w0 = max(len(r[0]) for r in self.rows)
        w1 = max(len(r[1]) for r in self.rows)
        return "\n".join(f"  {a:<{w0}}  {b:>{w1}}  {c}".rstrip() for a, b, c in self.rows)


def verdict(met: bool) -> str:
    return "[target met]" if met else "[target NOT met]"


def machine_info() -> dict[str, Any]:
    import cryptography
    from cryptography.hazmat.backends.openssl.backend import backend

    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "openssl": backend.openssl_version_text(),
        "tshark": tshark_version(),
    }
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = loadavg()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info


def write_results(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=1) + "\n")


def exit_status(failures: list[str]) -> int:
    """1 (after saying why on stderr) when an output was wrong, else 0: a missed target
    never fails a benchmark."""
    if failures:
        print("\nFAILED (wrong output):\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------
# run.py: one table for all captures
# --------------------------------------------------------------------------


def judge_capture(
    table: Table,
    kind: str,
    pcap: Path,
    gt: dict[str, Any],
    res: dict[str, Any],
    runs: int,
    startup: dict[str, Any] | None,
) -> None:
    """The ratios and targets of one capture's timings into ``res``, its rows into ``table``."""
    expected = len(gt["messages"])
    ours = res["ours_json"]["best_s"]
    ts = res.get("tshark")
    ratio_ts = round(ts["best_s"] / ours, 2) if ts else None
    res["tshark_over_ours"] = ratio_ts
    res["messages_per_s"] = round(expected / ours)
    title = "bulk (throughput)" if kind == "bulk" else "handshakes (RSA)"
    table.add(
        f"== {title}: {pcap.name}",
        f"{mb(pcap)} MB",
        f"{expected} SIP msgs, {len(gt['connections'])} conns",
    )
    table.add(
        f"ours --json (best of {runs})",
        f"{ours:.2f} s",
        f"runs {res['ours_json']['runs_s']}",
    )
    if "ours_hep" in res:
        table.add(
            f"ours --hep (best of {runs})",
            f"{res['ours_hep']['best_s']:.2f} s",
            f"runs {res['ours_hep']['runs_s']}",
        )
    table.add("messages/s (--json)", f"{res['messages_per_s']:,}")
    for n, w in res.get("workers", {}).items():
        base = res["workers"].get("1")
        speedup = f", {base['best_s'] / w['best_s']:.2f}x --workers 1" if base else ""
        note = f"runs {w['runs_s']}, loads {w['loads']}; {w['cpu_s']:.2f} CPU-s in all"
        if w["worker_cpu_s"]:
            note += f", workers {w['worker_cpu_s']} CPU-s"
            if startup is not None:
                # with a free core per worker, the run would take about this long
                w["free_cores_estimate_s"] = round(startup["best_s"] + max(w["worker_cpu_s"]), 3)
                note += f", est. {w['free_cores_estimate_s']:.2f} s on free cores"
        table.add(
            f"ours --json --workers {n} (best of {w['n']})",
            f"{w['best_s']:.2f} s",
            note + speedup,
        )
    if "1" in res.get("workers", {}) and startup is not None:
        one = res["workers"]["1"]
        for n, w in res["workers"].items():
            if "free_cores_estimate_s" in w:
                ratio = one["cpu_s"] / w["free_cores_estimate_s"]
                w["free_cores_speedup_estimate"] = round(ratio, 2)
                table.add(
                    f"  --workers {n} speed-up on free cores (est.)",
                    f"{ratio:.2f}x",
                    "--workers 1 CPU-s / (start-up + slowest worker's CPU-s): "
                    f"target >= 1.7x {verdict(ratio >= 1.7)}",
                )
    if "ours_hep" in res:
        table.add("messages/s (--hep)", f"{round(expected / res['ours_hep']['best_s']):,}")
    if ts:
        note = f"runs {ts['runs_s']}, {ts['sip_messages']}/{expected} msgs decrypted"
        if not ts["decrypted_all"]:
            note += " (INCOMPLETE: not comparable)"
        table.add(f"tshark (best of {ts['n']})", f"{ts['best_s']:.2f} s", note)
        table.add("tshark peak RSS", f"{ts['peak_rss_mb']:.1f} MB")
    targets: dict[str, Any] = {}
    if kind == "bulk":
        if ratio_ts is not None:
            met = ratio_ts >= TARGET_TSHARK_RATIO and ts["decrypted_all"]
            targets["tshark_over_ours"] = {
                "value": ratio_ts,
                "min": TARGET_TSHARK_RATIO,
                "met": met,
            }
            table.add(
                "ratio tshark/ours",
                f"{ratio_ts:.2f}x",
                f"target >= {TARGET_TSHARK_RATIO:g}x {verdict(met)}",
            )
        rss = res["ours_json"]["peak_rss_mb"]
        if "ours_hep" in res:
            rss = max(rss, res["ours_hep"]["peak_rss_mb"])
        met = rss < TARGET_RSS_MB
        targets["peak_rss_mb"] = {"value": rss, "max": TARGET_RSS_MB, "met": met}
        table.add("ours peak RSS", f"{rss:.1f} MB", f"target < {TARGET_RSS_MB:g} MB {verdict(met)}")
    else:
        ceil = res["rsa_ceiling"]
        r = round(ceil["best_s"] / ours, 3)
        met = r >= TARGET_CEILING_RATIO
        targets["ceiling_over_ours"] = {"value": r, "min": TARGET_CEILING_RATIO, "met": met}
        table.add(
            f"RSA ceiling ({ceil['decryptions']} decrypts)",
            f"{ceil['best_s']:.2f} s",
            f"{ceil['per_op_ms']:.3f} ms/op, runs {ceil['runs_s']}",
        )
        table.add(
            "ratio ceiling/ours",
            f"{r:.3f}",
            f"target >= {TARGET_CEILING_RATIO:g} {verdict(met)}",
        )
        if startup is not None and ours > startup["best_s"]:
            net = ours - startup["best_s"]
            r2 = round(ceil["best_s"] / net, 3)
            res["ceiling_over_ours_minus_startup"] = r2
            table.add(
                "  same, ours minus start-up",
                f"{r2:.3f}",
                f"(info: {net:.2f} s after {startup['best_s']:.2f} s start-up)",
            )
        table.add("handshakes/s (--json)", f"{ceil['decryptions'] / ours:,.0f}")
        if ratio_ts is not None:
            table.add("ratio tshark/ours", f"{ratio_ts:.2f}x", "(no target)")
        table.add("ours peak RSS", f"{res['ours_json']['peak_rss_mb']:.1f} MB", "(no target)")
    res["targets"] = targets


def print_run_summary(
    results: dict[str, Any], table: Table, kinds: list[str], quick: bool, path: Path
) -> None:
    m = results["machine"]
    print()
    print(
        f"captagent-tls benchmark{' (QUICK)' if quick else ''} - {m.get('cpu', '?')}, "
        f"{m['cpus']} CPUs, load {m.get('loadavg_before_timing')} before timing, "
        f"Python {m['python']}, "
        f"{m['openssl']}, {m['tshark']}"
    )
    code = revision.describe(results["source"])
    print(f"  code: {code}; peak RSS via {results['peak_rss_via']}")
    if table.rows:
        print(table.render())
    gen = ", ".join(
        f"{k} {results[k]['capture']['seconds']} s"
        if results[k]["capture"]["seconds"] is not None
        else f"{k} reused"
        for k in kinds
    )
    print(f"  recording: {gen}; total {results['total_s']:.0f} s; results in {path}")


# --------------------------------------------------------------------------
# live.py: one row per rate
# --------------------------------------------------------------------------

COLUMNS = (
    ("rate", "rate"),
    ("pkt/s", "offered_pps"),
    ("msg/s off", "offered_msgs_s"),
    ("replay s", "replay_s"),
    ("shipped s", "shipped_by_s"),
    ("lag s", "lag_s"),
    ("msg/s done", "achieved_msgs_s"),
    ("k.drops", "kernel_dropped"),
    ("pkts read", "packets_read"),
    ("HEP rx", "hep_received"),
    ("agent CPU s", "agent_cpu_s"),
    ("(sys)", "agent_sys_s"),
    ("CPU util", "agent_cpu_util"),
    ("msg/CPU-s", "msgs_per_cpu_s"),
    ("replay CPU s", "tcpreplay_cpu_s"),
)


def render(rows: list[dict[str, Any]]) -> str:
    def cell(r: dict[str, Any], key: str) -> str:
        v = r.get(key)
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.2f}"
        if isinstance(v, int) and key not in ("kernel_dropped",):
            return f"{v:,}"
        return str(v)

    heads = [h for h, _ in COLUMNS] + ["ok"]
    body = []
    for r in rows:
        flags = "ok" if r["zero_drops"] and r["complete"] else ""
        if not r["zero_drops"]:
            flags = "DROPS"
        if r["problems"]:
            flags = "WRONG"
        elif r["foreign_traffic"]:
            flags = "foreign"
        elif r["zero_drops"] and r["complete"] and not r["kept_up"]:
            flags = "ok, lagged"
        body.append([cell(r, k) for _, k in COLUMNS] + [flags])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(heads)]
    lines = ["  " + "  ".join(h.rjust(w) for h, w in zip(heads, widths, strict=True))]
    for b in body:
        lines.append("  " + "  ".join(c.rjust(w) for c, w in zip(b, widths, strict=True)))
    return "\n".join(lines)


def label(r: dict[str, Any]) -> str:
    if r["rate"] == "top":
        return f"--topspeed ({r['offered_pps']:,} pkt/s)"
    return f"{int(r['rate']):,} pkt/s"


def rate_line(r: dict[str, Any], expected: int) -> str:
    """What live.py prints as soon as a rate is done: its figures, each worker's, and its
    problems."""
    rate = r["rate"]
    return (
        f"    rate {rate:>6}: {r['offered_msgs_s']:>7,} msg/s offered, "
        f"{r['achieved_msgs_s'] or 0:>7,} done, lag {r['lag_s']:.2f} s, "
        f"{r['kernel_dropped']} kernel drops, {r['hep_received']:,}/{expected:,} HEP, "
        f"{r['msgs_per_cpu_s'] or 0:,} msg/CPU-s"
        + "".join(
            f"\n      worker {i}: {w['sip_messages']:,} msgs, {w['cpu_s']:.2f} CPU-s "
            f"(its life) = {w['msgs_per_cpu_s'] or 0:,} msg/CPU-s"
            + (
                f"; {cpu:.2f} CPU-s from ready to caught up = "
                f"{round(w['sip_messages'] / cpu) if cpu else 0:,} msg/CPU-s"
                if cpu is not None
                else ""
            )
            + f", {w['kernel_dropped']} kernel drops"
            for i, (w, cpu) in enumerate(
                zip(
                    r["per_worker"],
                    r["worker_window_cpu_s"] + [None] * len(r["per_worker"]),
                    strict=False,
                )
            )
        )
        + ("".join(f"\n      PROBLEM: {p}" for p in r["problems"]))
    )


def judge_rates(results: dict[str, Any]) -> None:
    """The best rates of live.py's runs and whether the target was met, into ``results``."""
    clean = [
        r for r in results["runs"]
        if r["zero_drops"] and r["complete"] and not r["problems"] and not r["foreign_traffic"]
    ]  # fmt: skip
    best = max(clean, key=lambda r: r["offered_pps"], default=None)
    kept = [r for r in clean if r["kept_up"]]
    best_kept = max(kept, key=lambda r: r["offered_pps"], default=None)
    top_done = max(clean, key=lambda r: r["achieved_msgs_s"] or 0, default=None)
    per_cpu = max((r["msgs_per_cpu_s"] or 0 for r in clean), default=0)
    met = any(
        (r["achieved_msgs_s"] or 0) >= TARGET_MSGS_PER_CORE
        and (r["msgs_per_cpu_s"] or 0) >= TARGET_MSGS_PER_CORE
        for r in clean
    )
    results["max_zero_drop_rate"] = best and {
        k: best[k] for k in ("rate", "offered_pps", "offered_msgs_s", "achieved_msgs_s")
    }
    results["max_kept_up_rate"] = best_kept and {
        k: best_kept[k] for k in ("rate", "offered_pps", "offered_msgs_s", "achieved_msgs_s")
    }
    results["best_achieved_msgs_s"] = top_done and top_done["achieved_msgs_s"]
    results["best_msgs_per_cpu_s"] = per_cpu
    results["target_met"] = met


def print_live_summary(
    results: dict[str, Any], pcap: Path, packets: int, expected: int, path: Path
) -> None:
    m = results["machine"]
    quick, profiled = results["quick"], results["profiled"]
    print()
    print(
        f"captagent-tls live benchmark{' (QUICK)' if quick else ''} - {m.get('cpu', '?')}, "
        f"{m['cpus']} CPUs, load {m.get('loadavg_at_start')}, Python {m['python']}; "
        f"{revision.describe(results['source'])}"
    )
    print(
        f"  replay of {pcap.name} ({packets:,} packets, {expected:,} SIP messages) onto lo "
        f"with tcpreplay; agent: {results['agent']}"
        + ("; PROFILED with py-spy" if profiled else "")
    )
    if results["runs"]:
        print(render(results["runs"]))
    best, best_kept = results["max_zero_drop_rate"], results["max_kept_up_rate"]
    if best:
        print(
            f"  max zero-drop rate with all {expected:,} messages shipped: {label(best)} "
            f"= {best['offered_msgs_s']:,} msg/s offered, {best['achieved_msgs_s']:,} "
            f"msg/s shipped"
        )
    else:
        print("  no rate had zero kernel drops with every message shipped")
    if best_kept:
        print(
            f"  max rate the agent kept up with (last message <= {KEPT_UP_LAG_S} s after the "
            f"replay): {label(best_kept)} = {best_kept['offered_msgs_s']:,} msg/s"
        )
    print(
        f"  best: {results['best_achieved_msgs_s'] or 0:,} msg/s shipped, "
        f"{results['best_msgs_per_cpu_s']:,} messages per agent CPU-second; target >= "
        f"{TARGET_MSGS_PER_CORE:,} msg/s per core with zero drops {verdict(results['target_met'])}"
    )
    for rate, p in results["profiles"].items():
        print(f"  py-spy at rate {rate} ({p['samples']} samples), top self time:")
        for fn, pct in p["self"][:10]:
            print(f"    {pct:5.1f}%  {fn}")
    print(f"  results in {path}")
