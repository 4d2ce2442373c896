"""The timed runs of our agent on a capture: ``--json``, ``--hep`` to a local UDP drain,
``--workers N``, and start-up on an empty capture.  Every run is a fresh process and its
message count is checked (:class:`bench.stats.WrongOutput` when it is wrong)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import revision, stats
from bench.collectors import UdpDrain
from bench.processes import loadavg, measure, summarize

if TYPE_CHECKING:
    from bench.rsa_ceiling import RsaCeiling


def time_ours_json(
    pcap: Path, expected: int, runs: int, after_each: RsaCeiling | None = None
) -> dict[str, Any]:
    rs = []
    for i in range(runs):
        r = measure(revision.reading(pcap, "--json"), env=revision.AGENT_ENV)
        stats.check_ok(r, f"json run {i + 1}")
        n = stats.sip_messages(r.stderr)
        if n != expected:
            raise stats.WrongOutput(
                f"{pcap.name} json run {i + 1}: {n} SIP messages, want {expected}"
            )
        print(
            f"    ours --json  run {i + 1}/{runs}: {r.wall_s:8.2f} s  {r.maxrss_mb:6.1f} MB",
            flush=True,
        )
        rs.append(r)
        if after_each is not None:
            after_each.run()
    return summarize(rs)


def time_workers(pcap: Path, expected: int, runs: int, counts: list[int]) -> dict[str, Any]:
    """``--json --workers N`` for each N: wall time, the CPU time of all processes together
    (workers are reaped by the agent, so their time is in its rusage), and each worker's own
    CPU time and share of the messages (the stats' workers line)."""
    results: dict[str, Any] = {}
    for n in counts:
        rs = []
        shares = []
        for i in range(runs):
            load = loadavg()
            r = measure(
                revision.reading(pcap, "--json", "--workers", str(n)),
                env=revision.AGENT_ENV,
            )
            stats.check_ok(r, f"--workers {n} run {i + 1}")
            got = stats.sip_messages(r.stderr)
            if got != expected:
                raise stats.WrongOutput(
                    f"--workers {n} run {i + 1}: {got} SIP messages, want {expected}"
                )
            each = stats.per_worker(r.stderr)
            if n > 1 and not each:
                raise stats.WrongOutput(f"--workers {n}: no workers line in the stats")
            share = {
                "load": load,
                "cpu_s": round(r.user_s + r.sys_s, 3),
                "worker_cpu_s": [w["cpu_s"] for w in each],
                "worker_messages": [w["sip_messages"] for w in each],
            }
            shares.append(share)
            rs.append(r)
            print(
                f"    --workers {n}  run {i + 1}/{runs}: {r.wall_s:8.2f} s wall, "
                f"{share['cpu_s']:.2f} CPU-s (workers {share['worker_cpu_s'] or '-'}), "
                f"load {load[0]}",
                flush=True,
            )
        res = summarize(rs)
        best = min(range(len(rs)), key=lambda i: rs[i].wall_s)
        res.update(shares[best])
        res["cpu_s_runs"] = [s["cpu_s"] for s in shares]
        res["loads"] = [s["load"][0] for s in shares]
        results[str(n)] = res
    return results


def time_startup(out: Path, runs: int) -> dict[str, Any]:
    """Our fixed cost: interpreter start-up, imports and key loading, measured
    on a capture with no packets (informational; the targets use full times)."""
    empty = out / "empty.pcap"
    empty.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
    rs = []
    for i in range(runs):
        r = measure(revision.reading(empty, "--json"), env=revision.AGENT_ENV)
        stats.check_ok(r, f"start-up run {i + 1}")
        rs.append(r)
    return summarize(rs)


def time_ours_hep(pcap: Path, expected: int, runs: int) -> dict[str, Any]:
    drain = UdpDrain()
    rs = []
    received = []
    try:
        for i in range(runs):
            drain.reset()
            hep = f"127.0.0.1:{drain.port}"
            r = measure(revision.reading(pcap, "--hep", hep), env=revision.AGENT_ENV)
            stats.check_ok(r, f"hep run {i + 1}")
            n = stats.sip_messages(r.stderr)
            sent, errors = stats.hep_sent(r.stderr)
            if n != expected or sent != expected or errors:
                raise stats.WrongOutput(
                    f"{pcap.name} hep run {i + 1}: {n} SIP messages, {sent} HEP sent, "
                    f"{errors} send errors; want {expected}"
                )
            got = drain.settle()
            received.append({"datagrams": got, "hep3": drain.hep3})
            print(
                f"    ours --hep   run {i + 1}/{runs}: {r.wall_s:8.2f} s  "
                f"{r.maxrss_mb:6.1f} MB  ({got} datagrams received)",
                flush=True,
            )
            rs.append(r)
    finally:
        drain.close()
    res = summarize(rs)
    res["sent_per_run"] = expected
    res["received"] = received
    lost = [expected - x["hep3"] for x in received]
    res["udp_lost_max"] = max(lost)
    if max(lost):
        print(
            f"    note: the local UDP drain missed up to {max(lost)} datagrams (socket "
            "buffer); the agent reported every one as sent",
            flush=True,
        )
    return res
