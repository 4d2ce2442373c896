#!/usr/bin/env python3
"""Soak benchmark: steady live traffic for half an hour, the agent's memory sampled throughout.

    sudo python -m bench.soak [--minutes 30] [--pps 2000] [--sample-s 10] [--hep tcp|udp]
                              [--warmup-min 5] [--quick] [--rev REV] [--out bench/out]

The bulk and handshake captures of bench/run.py (recorded here on a port of their own, so
that other recordings on loopback never see this traffic) are replayed onto ``lo`` by
tcpreplay at a steady packet rate, over and over, until the time is up.  Every round is a
fresh copy with new addresses (127.A.B.1 for both ends, A.B counting the rounds) and the
server port moved to a free port: every round brings flows the agent has never seen, as
real traffic does, rather than the same four-tuples again.  The IPv4 header checksum of the
copies is deliberately wrong, so the kernel drops the replayed packets instead of answering
them (no RST reaches the capture); the agent, like tcpdump, does not check checksums.

One agent runs the whole time: ``captagent-tls -i lo -f "tcp port P" -k KEY --hep
tcp://127.0.0.1:C --metrics ...``, shipping HEP to a collector in this process that counts
the packets.  Every ``--sample-s`` seconds the agent's RSS (/proc/PID/status) and a few of
its Prometheus gauges are written to ``OUT/soak-rss.csv``; at the end ``OUT/soak-summary.txt``
gives the start, minimum, maximum and end RSS and the least-squares slope per 10 minutes,
over the whole run and after the warm-up.  The last round is always played to its end, then
the agent is given time to catch up and stopped: with zero kernel drops, every message of
every round must have reached the collector (exit status 1 otherwise).  A growing RSS is
reported, never fatal.

Needs root and tcpreplay.  See bench/README.md, "Soak".
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import captures, replay, report, revision, stats
from bench.collectors import HepStreamCounter, UdpDrain, free_port
from bench.live_agent import capturing_argv, start_agent, stop_agent, wait_caught_up
from bench.memory_curve import Sampler, summarize, summary_text, warmup_end
from bench.paths import OUT

WARMUP_MIN = 5.0


# --------------------------------------------------------------------------
# the traffic: a copy of the captures per round, with new addresses and port
# --------------------------------------------------------------------------


@dataclass
class Template:
    """The records of one or more pcap files (Ethernet, IPv4 over TCP), and where each
    packet's IPv4 header is, for quick rewriting."""

    header: bytes  # pcap file header
    records: bytes  # every record of every file, in order
    packets: list[tuple[int, int, int]]  # (IPv4 header offset, header length, which ports)
    server_port: int

    @classmethod
    def load(cls, pcaps: list[Path], server_port: int) -> Template:
        header = b""
        parts: list[bytes] = []
        packets: list[tuple[int, int, int]] = []
        base = 0
        for pcap in pcaps:
            data = pcap.read_bytes()
            magic = struct.unpack_from("<I", data)[0]
            endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
            if struct.unpack_from(endian + "I", data, 20)[0] & 0x0FFFFFFF != 1:
                raise SystemExit(f"{pcap}: not an Ethernet capture")
            if not header:
                header = data[:24]
            elif data[:24] != header:
                raise SystemExit(f"{pcap}: a pcap header other than the first file's")
            pos = 24
            while pos + 16 <= len(data):
                caplen = struct.unpack_from(endian + "I", data, pos + 8)[0]
                frame = pos + 16
                if data[frame + 12 : frame + 14] == b"\x08\x00" and caplen >= 14 + 20 + 4:
                    ip = frame + 14
                    ihl = (data[ip] & 0x0F) * 4
                    if data[ip + 9] == 6 and caplen >= 14 + ihl + 4:
                        sport, dport = struct.unpack_from("!HH", data, ip + ihl)
                        which = (sport == server_port) | (dport == server_port) << 1
                        packets.append((base + ip - 24, ihl, which))
                pos = frame + caplen
            parts.append(data[24:pos])
            base += pos - 24
        return cls(header, b"".join(parts), packets, server_port)

    def round(self, index: int, port: int) -> bytes:
        """The capture for round ``index``: both ends at 127.A.B.1 (A.B = index + 1), the
        server on ``port``, and an IPv4 header checksum that the kernel rejects."""
        if not 0 <= index < 0xFFFF:
            raise ValueError("too many rounds")
        buf = bytearray(self.records)
        address = struct.pack("!I", 0x7F000001 | (index + 1) << 8)
        port_bytes = port.to_bytes(2, "big")
        unpack = struct.Struct("!10H").unpack_from
        for ip, ihl, which in self.packets:
            buf[ip + 12 : ip + 20] = address + address
            tcp = ip + ihl
            if which & 1:
                buf[tcp : tcp + 2] = port_bytes
            if which & 2:
                buf[tcp + 2 : tcp + 4] = port_bytes
            buf[ip + 10 : ip + 12] = b"\0\0"
            total = sum(unpack(buf, ip)) + sum(
                struct.unpack_from(f"!{(ihl - 20) // 2}H", buf, ip + 20)
            )
            while total > 0xFFFF:
                total = (total & 0xFFFF) + (total >> 16)
            correct = ~total & 0xFFFF
            buf[ip + 10 : ip + 12] = (correct ^ 1).to_bytes(2, "big")  # wrong on purpose
        return self.header + bytes(buf)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out",
        type=Path,
        default=OUT,
        help="captures and results (default bench/out, git-ignored)",
    )
    ap.add_argument("--minutes", type=float, help="how long to replay (default 30; --quick 3)")
    ap.add_argument("--pps", type=int, default=2000, help="packets per second (default 2000)")
    ap.add_argument(
        "--sample-s", type=float, default=10.0, help="seconds between RSS samples (default 10)"
    )
    ap.add_argument(
        "--warmup-min",
        type=float,
        help=f"minutes left out of the 'after warm-up' slope (default {WARMUP_MIN:g}, "
        "at most a third of the run); the warm-up also lasts until the TLS "
        "session cache is full",
    )
    ap.add_argument(
        "--hep",
        choices=("tcp", "udp"),
        default="tcp",
        help="HEP transport to the local collector (default tcp: the queue and "
        "acknowledgement tracking take part)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="the small quick- captures, 3 minutes (a smoke run)"
    )
    ap.add_argument("--rev", metavar="REV", help="measure src/ of this git revision (as run.py)")
    ap.add_argument(
        "--agent-args",
        default="",
        metavar="ARGS",
        help='more options for the agent, e.g. "--session-cache 1000"',
    )
    args = ap.parse_args(argv)
    replay.check_prerequisites()
    if args.pps < 1 or args.sample_s <= 0:
        raise SystemExit("--pps and --sample-s must be positive")
    minutes = args.minutes if args.minutes is not None else (3.0 if args.quick else 30.0)
    warmup_min = min(args.warmup_min if args.warmup_min is not None else WARMUP_MIN, minutes / 3)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    sizes, prefix = captures.sizes_and_prefix(args.quick)
    rev = revision.use_rev(args.rev, out)

    record_port = free_port()
    truths = [
        captures.make_capture(
            out, f"{prefix}soak-{kind}", kind, sizes[kind], reuse=True, port=record_port
        )[0]
        for kind in ("bulk", "handshakes")
    ]
    server_ports = {c["server_port"] for gt in truths for c in gt["connections"]}
    if len(server_ports) != 1:
        raise SystemExit(f"the captures use several server ports: {sorted(server_ports)}")
    template = Template.load(
        [captures.capture_paths(out, f"{prefix}soak-{kind}")[0] for kind in ("bulk", "handshakes")],
        server_ports.pop(),
    )
    round_messages = sum(len(gt["messages"]) for gt in truths)
    round_packets = len(template.packets)
    del truths

    port = free_port()
    collector: Any = HepStreamCounter() if args.hep == "tcp" else UdpDrain()
    hep_address = collector.address if args.hep == "tcp" else f"udp://127.0.0.1:{collector.port}"

    def received() -> int:
        return int(collector.count if args.hep == "tcp" else collector.hep3)

    metrics = f"127.0.0.1:{free_port()}"
    agent_argv = [
        *capturing_argv(port, hep_address, "--metrics", metrics),
        *shlex.split(args.agent_args),
    ]
    csv_path = out / f"{prefix}soak-rss.csv"
    summary_path = out / f"{prefix}soak-summary.txt"
    results_path = out / f"{prefix}soak-results.json"
    print(
        f"[soak] {minutes:g} min at {args.pps:,} packets/s: rounds of {round_packets:,} "
        f"packets and {round_messages:,} SIP messages ({round_packets / args.pps:.0f} s "
        f"each), server port {port}, HEP {hep_address}; RSS every {args.sample_s:g} s "
        f"to {csv_path}",
        flush=True,
    )

    rounds = 0
    agent = sampler = None
    err = tempfile.NamedTemporaryFile("w+b")  # noqa: SIM115 - closed in finally
    workdir = Path(tempfile.mkdtemp(prefix="soak-", dir=out))
    failures: list[str] = []
    try:
        agent, startup_s = start_agent(agent_argv, err)
        sampler = Sampler(agent.pid, metrics, csv_path, args.sample_s, received, lambda: rounds)
        sampler.sample()
        started = time.monotonic()
        current = workdir / "round.pcap"
        current.write_bytes(template.round(0, port))
        while True:
            tcpreplay = subprocess.Popen(
                replay.replay_argv(current, str(args.pps)),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            upcoming = None
            if time.monotonic() - started + round_packets / args.pps < minutes * 60:
                upcoming = template.round(rounds + 1, port)  # made while this one plays
            output = tcpreplay.communicate()[0].decode("utf-8", "replace")
            sent = replay.replayed(output)
            if tcpreplay.returncode != 0 or not sent or sent[0] != round_packets:
                raise RuntimeError(f"tcpreplay failed ({tcpreplay.returncode}):\n{output[-2000:]}")
            rounds += 1
            if agent.poll() is not None:
                raise stats.WrongOutput(
                    f"the agent exited ({agent.returncode}) during round "
                    f"{rounds}:\n" + Path(err.name).read_text()[-3000:]
                )
            if upcoming is None:
                break
            current.write_bytes(upcoming)
            if rounds % 5 == 0:
                row = sampler.rows[-1]
                print(
                    f"    {(time.monotonic() - started) / 60:5.1f} min: round {rounds}, RSS "
                    f"{row['rss_kib'] / 1024:.1f} MiB, {received():,} HEP received",
                    flush=True,
                )
        wait_caught_up(agent.pid, received)
        sampler.sample()
        sampler.close()
        stop_agent(agent)
        if hasattr(collector, "settle"):
            collector.settle(0.5)
        else:
            time.sleep(0.5)
        stderr = Path(err.name).read_text(errors="replace")
        if agent.returncode != 0:
            raise stats.WrongOutput(f"agent exit status {agent.returncode}:\n{stderr[-3000:]}")
    finally:
        if sampler is not None:
            sampler.close()
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        collector.close()
        err.close()
        shutil.rmtree(workdir, ignore_errors=True)

    kernel = stats.kernel(stderr)
    k_drop = kernel[1] + kernel[2] if kernel else -1
    sip = stats.sip_messages(stderr)
    hep_sent = stats.hep_sent_total(stderr)
    hep_dropped = stats.hep_dropped_total(stderr)
    got = received()
    expected = rounds * round_messages
    checks = [
        f"{rounds} rounds: {expected:,} SIP messages replayed, {sip:,} framed by the agent, "
        f"{hep_sent:,} HEP sent, {got:,} received by the collector, {hep_dropped} dropped "
        f"(queue full); kernel drops {k_drop}",
    ]
    if got != hep_sent:
        failures.append(f"the agent says {hep_sent} HEP packets sent, the collector got {got}")
    if getattr(collector, "bad", 0):
        failures.append("the HEP stream was not HEPv3")
    if k_drop == 0 and (sip != expected or got != expected):
        failures.append(
            f"zero kernel drops but {sip} SIP messages and {got} HEP received, want {expected}"
        )
    checks += [f"PROBLEM: {f}" for f in failures]

    summary = summarize(sampler.rows, warmup_end(sampler.rows, warmup_min * 60))
    src = revision.source(rev)
    facts = {
        "minutes": minutes, "pps": args.pps, "rounds": rounds, "round_packets": round_packets,
        "round_messages": round_messages, "hep": args.hep, "sample_s": args.sample_s,
        "warmup_min": warmup_min,
        "agent": " ".join(agent_argv), "startup_s": startup_s, "checks": checks,
        "code": revision.describe(src),
        "machine": f"{os.cpu_count()} CPUs, load at end "
                   f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}",
    }  # fmt: skip
    text = summary_text(summary, facts)
    summary_path.write_text(text + "\n")
    report.write_results(results_path, {
        "summary": summary, **{k: v for k, v in facts.items() if k != "checks"},
        "checks": checks, "failures": failures, "kernel_dropped": k_drop, "sip_messages": sip,
        "hep_sent": hep_sent, "hep_received": got, "expected_messages": expected,
        "machine_info": report.machine_info(), "source": src, "stats": stats.stats_block(stderr),
    })  # fmt: skip
    print()
    print(text)
    print(f"  curve in {csv_path}; summary in {summary_path}")
    return report.exit_status(failures)


if __name__ == "__main__":
    sys.exit(main())
