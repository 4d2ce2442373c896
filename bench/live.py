#!/usr/bin/env python3
"""Live-path benchmark: the bulk capture replayed onto ``lo`` with tcpreplay at rising rates.

    sudo python -m bench.live [--rates 5000,10000,...,top] [--quick] [--out bench/out]

For each rate (packets per second, or ``top`` for tcpreplay's --topspeed) a fresh agent runs
``captagent-tls -i lo -f "tcp port 5061" -k KEY --hep udp://127.0.0.1:PORT`` while a thread
here receives and keeps its HEP datagrams.  After the replay, the agent is given time to
catch up, then SIGTERM; its final stats give the kernel's drop counts.  Every HEP payload is
checked against the capture's ground truth.  Rates rise until the kernel reports drops.

Needs root and tcpreplay; the capture comes from bench/run.py (recorded if missing).  See
bench/README.md, "Live capture", for what is measured and the caveats.  The exit status is
non-zero only when an output is wrong (e.g. at a rate with zero kernel drops, not every
message arrived, or a payload differs from the ground truth); a missed target is reported,
never fatal.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import captures, pyspy, replay, report, revision, stats
from bench.collectors import HepReceiver
from bench.live_agent import capturing_argv, start_agent, stop_agent, wait_caught_up
from bench.paths import OUT
from bench.processes import loadavg, proc_cpu_s_alone, tree_times
from bench.verify import Key, received_keys, truth_keys


def agent_argv(port: int, buffer_kib: int | None, workers: int = 1) -> list[str]:
    argv = capturing_argv(5061, f"udp://127.0.0.1:{port}")
    if buffer_kib is not None:
        argv += ["-B", str(buffer_kib)]
    if workers != 1:
        argv += ["--workers", str(workers)]
    return argv


def run_rate(
    pcap: Path,
    packets: int,
    expected: int,
    truth: collections.Counter[Key],
    server_ports: set[int],
    rate: str,
    buffer_kib: int | None,
    profile: Path | None,
    blocking: bool = False,
    workers: int = 1,
) -> dict[str, Any]:
    """One agent, one replay at ``rate``; the figures and the checks of that run."""
    rx = HepReceiver(blocking)
    agent = spy = None
    err = tempfile.NamedTemporaryFile("w+b")  # noqa: SIM115 - closed in finally
    res: dict[str, Any] = {"rate": rate}
    try:
        res["loadavg_before"] = loadavg()
        agent, res["startup_s"] = start_agent(agent_argv(rx.port, buffer_kib, workers), err)
        if profile is not None:
            spy = subprocess.Popen(
                pyspy.record_argv(agent.pid, profile),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)  # let py-spy attach
        user_ready, sys_ready = tree_times(agent.pid)
        pids = stats.worker_pids(Path(err.name).read_text(errors="replace"))
        workers_ready = [proc_cpu_s_alone(pid) for pid in pids]

        # the replay
        t0 = time.perf_counter()
        tr = subprocess.Popen(
            replay.replay_argv(pcap, rate),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        out = tr.stdout.read().decode("utf-8", "replace") if tr.stdout else ""
        _, status, tr_ru = os.wait4(tr.pid, 0)
        t1 = time.perf_counter()
        tr.returncode = os.waitstatus_to_exitcode(status)
        done = replay.replayed(out)
        if tr.returncode != 0 or not done:
            raise RuntimeError(f"tcpreplay failed ({tr.returncode}):\n{out[-2000:]}")
        sent, replay_s = done
        if sent != packets:
            raise RuntimeError(f"tcpreplay sent {sent} of {packets} packets:\n{out[-2000:]}")

        # the agent's last sign of work (a datagram or CPU time)
        t_idle = wait_caught_up(agent.pid, lambda: rx.count)
        user_done, sys_done = tree_times(agent.pid)
        workers_done = [proc_cpu_s_alone(pid) for pid in pids]
        before_term = rx.count
        t_last = rx.last_rx

        agent_ru = stop_agent(agent)
        if spy is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)
        rx.settle(0.5)
        stderr = Path(err.name).read_text(errors="replace")
        if agent.returncode != 0:
            raise stats.WrongOutput(f"agent exit status {agent.returncode}:\n{stderr[-3000:]}")
    finally:
        for p in (agent, spy):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        rx.close()
        err.close()

    k = stats.kernel(stderr)
    if not k:
        raise stats.WrongOutput(f"no 'kernel:' line in the agent's stats:\n{stderr[-3000:]}")
    k_recv, k_drop, k_ifdrop = k
    read = stats.stat_int(stats.READ, stderr, "packets: N read")
    sip = stats.sip_messages(stderr)
    hep_sent, hep_errors = stats.hep_sent(stderr)
    rec_ok = stats.stat_int(stats.RECORDS, stderr, "TLS records")
    rec_failed = stats.stat_int(stats.RECORDS, stderr, "TLS records", 2)
    gaps = stats.stat_int(stats.GAPS, stderr, "gaps")

    got, malformed = received_keys(rx.datagrams, server_ports)
    received = sum(got.values())
    unexpected = sum((got - truth).values())
    missing = sum((truth - got).values())

    window = max(t_last, t1) - t0  # replay start .. last message shipped
    agent_user, agent_sys = user_done - user_ready, sys_done - sys_ready
    agent_cpu = agent_user + agent_sys
    res.update(
        {
            "packets": packets,
            "replay_s": replay_s,
            "replay_wall_s": round(t1 - t0, 3),
            "offered_pps": round(packets / replay_s),
            "offered_msgs_s": round(expected / replay_s),
            "shipped_by_s": round(window, 3),
            "lag_s": round(max(0.0, t_last - t1), 3),
            "achieved_msgs_s": round(received / window) if window > 0 else None,
            "kernel_received": k_recv,
            "kernel_dropped": k_drop,
            "interface_dropped": k_ifdrop,
            "packets_read": read,
            "sip_messages": sip,
            "hep_sent": hep_sent,
            "hep_send_errors": hep_errors,
            "hep_received": received,
            "hep_received_after_sigterm": rx.count - before_term,
            "hep_malformed": malformed,
            "missing": missing,
            "unexpected": unexpected,
            "tls_records_decrypted": rec_ok,
            "tls_records_failed": rec_failed,
            "tcp_gaps": gaps,
            "agent_cpu_s": round(agent_cpu, 2),
            "agent_user_s": round(agent_user, 2),
            "agent_sys_s": round(agent_sys, 2),
            "agent_cpu_total_s": round(agent_ru.ru_utime + agent_ru.ru_stime, 2),
            "busy_s": round(t_idle - t0, 3),
            "agent_cpu_util": round(agent_cpu / (t_idle - t0), 2) if t_idle > t0 else None,
            "msgs_per_cpu_s": round(sip / agent_cpu) if agent_cpu > 0 else None,
            "workers": workers,
            "per_worker": stats.per_worker(stderr),
            "worker_window_cpu_s": [
                round(b - a, 3) for a, b in zip(workers_ready, workers_done, strict=False)
            ],
            "tcpreplay_cpu_s": round(tr_ru.ru_utime + tr_ru.ru_stime, 2),
            "stats": stats.stats_block(stderr),
        }
    )
    res["zero_drops"] = k_drop == 0 and k_ifdrop == 0
    res["foreign_traffic"] = read != packets and res["zero_drops"]
    res["complete"] = received == expected and missing == 0 and unexpected == 0
    res["kept_up"] = res["lag_s"] <= report.KEPT_UP_LAG_S

    problems = []
    if malformed:
        problems.append(f"{malformed} datagrams are not HEPv3 SIP packets")
    if unexpected and not res["foreign_traffic"]:
        problems.append(f"{unexpected} HEP payloads not in the ground truth (or duplicated)")
    if hep_sent != sip or hep_errors:
        problems.append(f"{sip} SIP messages but {hep_sent} HEP sent, {hep_errors} send errors")
    if res["zero_drops"] and not res["foreign_traffic"]:
        # with kernel drops, records cut by a TCP gap fail their tag check and are dropped:
        # that is correct behaviour, so this is checked only without drops
        if rec_failed:
            problems.append(f"zero kernel drops but {rec_failed} TLS records failed authentication")
        if sip != expected:
            problems.append(f"zero kernel drops but {sip} SIP messages, want {expected}")
        if received != expected or missing:
            lost = " (the agent sent them all: UDP loss here)" if hep_sent == expected else ""
            problems.append(
                f"zero kernel drops but {received} of {expected} messages arrived, "
                f"{missing} missing{lost}"
            )
    res["problems"] = problems
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out",
        type=Path,
        default=OUT,
        help="captures and results (default bench/out, git-ignored)",
    )
    ap.add_argument(
        "--rates",
        type=replay.parse_rates,
        help=f"comma-separated packets/s for tcpreplay --pps, 'top' for --topspeed "
        f"(default {replay.FULL_RATES}; --quick: {replay.QUICK_RATES})",
    )
    ap.add_argument("--quick", action="store_true", help="the small quick-bulk capture (smoke run)")
    ap.add_argument(
        "--all-rates",
        action="store_true",
        help="go on after the first rate with kernel drops",
    )
    ap.add_argument(
        "--buffer-kib",
        type=int,
        help="pass -B KIB to the agent (default: the agent's own, 32768)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="sample the agent with py-spy during each run (OUT/live-profile-RATE.txt, "
        "results in live-results-profiled.json); py-spy takes CPU too, so figures of "
        "profiled runs are not comparable",
    )
    ap.add_argument(
        "--blocking-receiver",
        action="store_true",
        help="the HEP receiver sleeps in recv() (each datagram then wakes it, at the agent's "
        "expense) instead of polling every 5 ms",
    )
    ap.add_argument("--rev", metavar="REV", help="measure src/ of this git revision (as run.py)")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="pass --workers N to the agent (default 1); the table then also shows each "
        "worker's messages per CPU-second",
    )
    args = ap.parse_args(argv)

    replay.check_prerequisites(*(("py-spy",) if args.profile else ()))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    sizes, prefix = captures.sizes_and_prefix(args.quick)
    rates = args.rates or replay.parse_rates(
        replay.QUICK_RATES if args.quick else replay.FULL_RATES
    )
    rev = revision.use_rev(args.rev, out)

    gt, _ = captures.make_capture(out, prefix + "bulk", "bulk", sizes["bulk"], reuse=True)
    pcap, _ = captures.capture_paths(out, prefix + "bulk")
    expected = len(gt["messages"])
    truth = truth_keys(gt)
    server_ports = {c["server_port"] for c in gt["connections"]}
    connections = len(gt["connections"])
    del gt
    packets = captures.pcap_packets(pcap)
    print(
        f"[live] {pcap.name}: {packets:,} packets, {expected:,} SIP messages, "
        f"{connections} connections; rates {','.join(rates)}",
        flush=True,
    )

    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "machine": report.machine_info(),
        "agent": " ".join(agent_argv(0, args.buffer_kib, args.workers)).replace(
            "127.0.0.1:0", "127.0.0.1:PORT"
        ),
        "workers": args.workers,
        "source": revision.source(rev),
        "capture": {"file": pcap.name, "packets": packets, "messages": expected},
        "target_msgs_per_s_per_core": report.TARGET_MSGS_PER_CORE,
        "profiled": args.profile,
        "hep_receiver": "blocking recv()" if args.blocking_receiver else "polling every 5 ms",
        "runs": [],
    }
    failures: list[str] = []
    profiles: dict[str, Any] = {}
    for rate in rates:
        profile = out / f"live-profile-{prefix}{rate}.txt" if args.profile else None
        try:
            r = run_rate(
                pcap,
                packets,
                expected,
                truth,
                server_ports,
                rate,
                args.buffer_kib,
                profile,
                args.blocking_receiver,
                args.workers,
            )
        except stats.WrongOutput as exc:
            failures.append(f"rate {rate}: {exc}")
            print(f"    rate {rate}: WRONG OUTPUT: {exc}", flush=True)
            break
        results["runs"].append(r)
        failures += [f"rate {rate}: {p}" for p in r["problems"]]
        print(report.rate_line(r, expected), flush=True)
        if profile is not None and profile.exists():
            profiles[rate] = pyspy.summarize_profile(profile)
        if not r["zero_drops"] and not args.all_rates:
            break

    report.judge_rates(results)
    results["profiles"] = profiles
    results["failures"] = failures
    name = f"live-results{'-quick' if args.quick else ''}{'-profiled' if args.profile else ''}.json"
    report.write_results(out / name, results)
    report.print_live_summary(results, pcap, packets, expected, out / name)
    return report.exit_status(failures)


if __name__ == "__main__":
    sys.exit(main())
