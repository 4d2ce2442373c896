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
import contextlib
import csv
import json
import math
import os
import re
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import live  # agent start/stop, catch-up, tcpreplay arguments
from bench import run as bench  # captures, UDP drain, the agent command

WARMUP_MIN = 5.0
FLAT_TOLERANCE = 0.02  # "no growth trend": the fitted growth after warm-up < 2 % of the mean
FLAT_TOLERANCE_MIB = 2.0  # ... or less than 2 MiB, whichever is larger


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------
# the collector
# --------------------------------------------------------------------------


class HepStreamCounter:
    """A HEP collector over TCP on 127.0.0.1 that counts the HEPv3 packets it receives."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.count = 0
        self.bytes = 0
        self.bad = 0  # streams that stopped being HEPv3
        self.connections = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(0.2)
        buffer = bytearray()
        with sock:
            while not self._stop.is_set():
                try:
                    data = sock.recv(1 << 20)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                pos = 0
                while len(buffer) - pos >= 6:
                    total = int.from_bytes(buffer[pos + 4 : pos + 6], "big")
                    if buffer[pos : pos + 4] != b"HEP3" or total < 6:
                        self.bad += 1
                        return
                    if len(buffer) - pos < total:
                        break
                    pos += total
                    self.count += 1
                    self.bytes += total
                del buffer[:pos]

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        for thread in self._threads:
            thread.join(2)


# --------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------


def proc_status_kib(pid: int, *fields: str) -> dict[str, int]:
    """``VmRSS`` and friends from /proc/PID/status, in KiB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in fields:
            values[name] = int(rest.split()[0])
    return values


_METRIC = re.compile(r"^(captagent_tls_\w+?)(?:\{[^}]*\})? (\S+)$", re.M)


def scrape(address: str) -> dict[str, float]:
    """The agent's metrics, summed over their labels."""
    try:
        text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    values: dict[str, float] = {}
    for name, value in _METRIC.findall(text):
        values[name] = values.get(name, 0.0) + float(value)
    return values


COLUMNS = (
    "t_s", "round", "rss_kib", "rss_anon_kib", "threads", "cpu_s", "packets", "sip_messages",
    "hep_received", "active_flows", "session_cache_evictions", "tls_held_bytes", "hep_queued",
    "kernel_dropped",
)  # fmt: skip


class Sampler:
    """A thread that writes one CSV row every ``interval`` seconds."""

    def __init__(
        self, pid: int, metrics: str, path: Path, interval: float, received: Any, round_of: Any
    ) -> None:
        self.pid, self.metrics, self.interval = pid, metrics, interval
        self.received, self.round_of = received, round_of
        self.rows: list[dict[str, float]] = []
        self.started = time.monotonic()
        self._out = path.open("w", newline="")
        self._csv = csv.DictWriter(self._out, COLUMNS)
        self._csv.writeheader()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def sample(self) -> dict[str, float]:
        status = proc_status_kib(self.pid, "VmRSS", "RssAnon", "Threads")
        m = scrape(self.metrics)
        row = {
            "t_s": round(time.monotonic() - self.started, 1),
            "round": self.round_of(),
            "rss_kib": status.get("VmRSS", 0),
            "rss_anon_kib": status.get("RssAnon", 0),
            "threads": status.get("Threads", 0),
            "cpu_s": round(live.proc_cpu_s(self.pid), 2),
            "packets": m.get("captagent_tls_packets_total", -1),
            "sip_messages": m.get("captagent_tls_sip_messages_total", -1),
            "hep_received": self.received(),
            "active_flows": m.get("captagent_tls_active_flows", -1),
            "session_cache_evictions": m.get("captagent_tls_session_cache_evictions_total", -1),
            "tls_held_bytes": m.get("captagent_tls_tls_held_bytes", -1),
            "hep_queued": m.get("captagent_tls_hep_queued", -1),
            "kernel_dropped": m.get("captagent_tls_kernel_dropped_packets_total", -1),
        }
        self.rows.append(row)
        self._csv.writerow(row)
        self._out.flush()
        return row

    def _loop(self) -> None:
        n = 0
        while True:
            n += 1
            if self._stop.wait(max(0.0, self.started + n * self.interval - time.monotonic())):
                return
            with contextlib.suppress(OSError, ValueError):  # the agent may just have exited
                self.sample()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._out.close()


# --------------------------------------------------------------------------
# the curve
# --------------------------------------------------------------------------


def slope_per_10_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB), in MiB per 10 minutes."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 600.0


def warmup_end(rows: list[dict[str, float]], minimum_s: float) -> float:
    """The warm-up lasts ``minimum_s`` and at least until the TLS session cache is full (its
    first eviction): until then the cache grows by design, up to --session-cache entries."""
    full = next((r["t_s"] for r in rows if r["session_cache_evictions"] > 0), None)
    return max(minimum_s, full) if full is not None else minimum_s


def summarize(rows: list[dict[str, float]], warmup_s: float) -> dict[str, Any]:
    points = [(r["t_s"], r["rss_kib"] / 1024.0) for r in rows if r["rss_kib"]]
    if not points:
        return {"samples": 0}
    after = [p for p in points if p[0] >= warmup_s]
    values = [v for _, v in points]
    summary: dict[str, Any] = {
        "samples": len(points),
        "duration_s": points[-1][0],
        "start_mib": round(points[0][1], 1),
        "min_mib": round(min(values), 1),
        "max_mib": round(max(values), 1),
        "end_mib": round(points[-1][1], 1),
        "slope_mib_per_10min": _round(slope_per_10_min(points)),
        "warmup_s": warmup_s,
        "samples_after_warmup": len(after),
    }
    if len(after) >= 3:
        slope = slope_per_10_min(after)
        span = after[-1][0] - after[0][0]
        mean = sum(v for _, v in after) / len(after)
        growth = (slope or 0.0) * span / 600.0
        allowed = max(FLAT_TOLERANCE * mean, FLAT_TOLERANCE_MIB)
        summary.update({
            "after_warmup_start_mib": round(after[0][1], 1),
            "after_warmup_min_mib": round(min(v for _, v in after), 1),
            "after_warmup_max_mib": round(max(v for _, v in after), 1),
            "after_warmup_mean_mib": round(mean, 1),
            "slope_after_warmup_mib_per_10min": _round(slope),
            "fitted_growth_after_warmup_mib": round(growth, 2),
            "flat": abs(growth) < allowed,
            "flat_criterion": f"|fitted growth after warm-up| < max({FLAT_TOLERANCE:.0%} of "
                              f"the mean, {FLAT_TOLERANCE_MIB:g} MiB) = {allowed:.1f} MiB",
        })  # fmt: skip
    return summary


def _round(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 2)


def summary_text(s: dict[str, Any], facts: dict[str, Any]) -> str:
    lines = [
        f"captagent-tls soak: {facts['minutes']:g} min of {facts['pps']:,} packets/s "
        f"({facts['rounds']} rounds of {facts['round_packets']:,} packets, "
        f"{facts['round_messages']:,} SIP messages each) onto lo; HEP over {facts['hep']}",
        f"  agent: {facts['agent']}",
        f"  code: {facts['code']}; {facts['machine']}",
    ]
    if not s.get("samples"):
        return "\n".join([*lines, "  no samples"])
    lines += [
        f"  RSS, {s['samples']} samples every {facts['sample_s']:g} s over "
        f"{s['duration_s'] / 60:.1f} min: start {s['start_mib']} MiB, min {s['min_mib']}, "
        f"max {s['max_mib']}, end {s['end_mib']}",
        f"  slope (least squares): {s['slope_mib_per_10min']} MiB per 10 min over the whole run",
    ]
    if "slope_after_warmup_mib_per_10min" in s:
        lines += [
            f"  after the warm-up ({s['warmup_s'] / 60:.1f} min: at least "
            f"{facts['warmup_min']:.1f} min, and until the TLS session cache was full): start "
            f"{s['after_warmup_start_mib']} MiB, min {s['after_warmup_min_mib']}, max "
            f"{s['after_warmup_max_mib']}, mean {s['after_warmup_mean_mib']}; slope "
            f"{s['slope_after_warmup_mib_per_10min']} MiB per 10 min (fitted growth "
            f"{s['fitted_growth_after_warmup_mib']} MiB)",
            f"  memory {'FLAT' if s['flat'] else 'GROWS'}: {s['flat_criterion']}",
        ]
    lines += [f"  {line}" for line in facts["checks"]]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

_SENT = re.compile(r"^HEP \S+: (\d+) sent\b", re.M)
_DROPPED = re.compile(r"(\d+) dropped \(queue full\)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out",
        type=Path,
        default=bench.ROOT / "bench" / "out",
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
    if os.geteuid() != 0:
        raise SystemExit("live capture and tcpreplay need root")
    if shutil.which("tcpreplay") is None:
        raise SystemExit("tcpreplay not found")
    if args.pps < 1 or args.sample_s <= 0:
        raise SystemExit("--pps and --sample-s must be positive")
    minutes = args.minutes if args.minutes is not None else (3.0 if args.quick else 30.0)
    warmup_min = min(args.warmup_min if args.warmup_min is not None else WARMUP_MIN, minutes / 3)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    prefix = "quick-" if args.quick else ""
    sizes = bench.QUICK if args.quick else bench.FULL
    rev = bench.export_rev(args.rev, out / "rev-src") if args.rev else None

    record_port = free_port()
    truths = [
        bench.make_capture(
            out, f"{prefix}soak-{kind}", kind, sizes[kind], reuse=True, port=record_port
        )[0]
        for kind in ("bulk", "handshakes")
    ]
    server_ports = {c["server_port"] for gt in truths for c in gt["connections"]}
    if len(server_ports) != 1:
        raise SystemExit(f"the captures use several server ports: {sorted(server_ports)}")
    template = Template.load(
        [bench.capture_paths(out, f"{prefix}soak-{kind}")[0] for kind in ("bulk", "handshakes")],
        server_ports.pop(),
    )
    round_messages = sum(len(gt["messages"]) for gt in truths)
    round_packets = len(template.packets)
    del truths

    port = free_port()
    collector: Any = HepStreamCounter() if args.hep == "tcp" else bench.UdpDrain()
    hep_address = collector.address if args.hep == "tcp" else f"udp://127.0.0.1:{collector.port}"

    def received() -> int:
        return int(collector.count if args.hep == "tcp" else collector.hep3)

    metrics = f"127.0.0.1:{free_port()}"
    agent_argv = [*bench.agent_cmd(), "-i", "lo", "-f", f"tcp port {port}",
                  "-k", str(bench.KEY), "--hep", hep_address, "--metrics", metrics,
                  "-v", "--stats-interval", "3600", *shlex.split(args.agent_args)]  # fmt: skip
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
        agent, startup_s = live.start_agent(agent_argv, err)
        sampler = Sampler(agent.pid, metrics, csv_path, args.sample_s, received, lambda: rounds)
        sampler.sample()
        started = time.monotonic()
        current = workdir / "round.pcap"
        current.write_bytes(template.round(0, port))
        while True:
            replay = subprocess.Popen(
                live.replay_argv(current, str(args.pps)),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            upcoming = None
            if time.monotonic() - started + round_packets / args.pps < minutes * 60:
                upcoming = template.round(rounds + 1, port)  # made while this one plays
            output = replay.communicate()[0].decode("utf-8", "replace")
            sent = live._REPLAY.search(output)
            if replay.returncode != 0 or not sent or int(sent.group(1)) != round_packets:
                raise RuntimeError(f"tcpreplay failed ({replay.returncode}):\n{output[-2000:]}")
            rounds += 1
            if agent.poll() is not None:
                raise bench.WrongOutput(
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
        live.wait_caught_up(agent.pid, received)
        sampler.sample()
        sampler.close()
        live.stop_agent(agent)
        if hasattr(collector, "settle"):
            collector.settle(0.5)
        else:
            time.sleep(0.5)
        stderr = Path(err.name).read_text(errors="replace")
        if agent.returncode != 0:
            raise bench.WrongOutput(f"agent exit status {agent.returncode}:\n{stderr[-3000:]}")
    finally:
        if sampler is not None:
            sampler.close()
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        collector.close()
        err.close()
        shutil.rmtree(workdir, ignore_errors=True)

    kernel = live._KERNEL.search(stderr)
    k_drop = int(kernel.group(2)) + int(kernel.group(3)) if kernel else -1
    sip = bench.stat_sip(bench.Run(0, 0, 0, 0, 0, stderr))
    hep_sent = sum(int(x) for x in _SENT.findall(stderr))
    hep_dropped = sum(int(x) for x in _DROPPED.findall(stderr))
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
    src = bench.source_info()
    facts = {
        "minutes": minutes, "pps": args.pps, "rounds": rounds, "round_packets": round_packets,
        "round_messages": round_messages, "hep": args.hep, "sample_s": args.sample_s,
        "warmup_min": warmup_min,
        "agent": " ".join(agent_argv), "startup_s": startup_s, "checks": checks,
        "code": f"src/ of git revision {rev[:12]}" if rev else f"commit {src['commit']}" + (
            f" + uncommitted changes in {len(src['src_changes'])} src files"
            if src["src_changes"] else ""),
        "machine": f"{os.cpu_count()} CPUs, load at end "
                   f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}",
    }  # fmt: skip
    text = summary_text(summary, facts)
    summary_path.write_text(text + "\n")
    results_path.write_text(json.dumps({
        "summary": summary, **{k: v for k, v in facts.items() if k != "checks"},
        "checks": checks, "failures": failures, "kernel_dropped": k_drop, "sip_messages": sip,
        "hep_sent": hep_sent, "hep_received": got, "expected_messages": expected,
        "machine_info": bench.machine_info(), "source": {"rev": rev[:12]} if rev else src,
        "stats": stderr[stderr.find("--- captagent-tls stats ---"):].strip(),
    }, indent=1) + "\n")  # fmt: skip
    print()
    print(text)
    print(f"  curve in {csv_path}; summary in {summary_path}")
    if failures:
        print("\nFAILED (wrong output):\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
