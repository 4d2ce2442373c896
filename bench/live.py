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
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import run as bench  # captures, ground truth, UDP drain, the agent command

TARGET_MSGS_PER_CORE = 50_000  # SIP messages/s decrypted and shipped per core, zero drops

FULL_RATES = "5000,10000,15000,20000,25000,30000,40000,50000,65000,80000,100000,150000,top"
QUICK_RATES = "2000,10000,top"

READY_TIMEOUT_S = 60.0
CATCH_UP_QUIET_S = 2.0  # caught up: no datagram and (almost) no agent CPU for this long
CATCH_UP_MAX_S = 600.0
KEPT_UP_LAG_S = 0.5  # "kept up": the last message left at most this long after the replay


# --------------------------------------------------------------------------
# the collector side: keep every HEP datagram, then check it against the truth
# --------------------------------------------------------------------------


class HepReceiver(bench.UdpDrain):
    """bench.UdpDrain that also keeps each datagram and the time the last one arrived.

    ``poll`` (the default) reads the socket without blocking every POLL_S seconds instead of
    sleeping in recv().  On loopback the sender's sendto() runs the whole receive path,
    including waking a receiver that sleeps in recv(): measured on the 2-vCPU VM this was
    made on, that is ~30 us of the agent's CPU per datagram against ~8 us when nobody waits
    (see bench/README.md).  A collector on another host costs the agent no wake-up, so
    polling is the closer model; ``blocking=True`` gives the sleeping receiver.
    """

    POLL_S = 0.005

    def __init__(self, blocking: bool = False) -> None:
        # set before the base class starts the receiving thread
        self.datagrams: list[bytes] = []
        self.last_rx = 0.0
        self.blocking = blocking
        super().__init__()

    def _loop(self) -> None:
        recv, keep, clock = self.sock.recv, self.datagrams.append, time.perf_counter
        if self.blocking:
            while not self._stop.is_set():
                try:
                    data = recv(65535)
                except TimeoutError:
                    continue
                except OSError:
                    return
                keep(data)
                self.last_rx = clock()
                self.count += 1
            return
        self.sock.setblocking(False)
        while not self._stop.is_set():
            n = 0
            while True:
                try:
                    keep(recv(65535))
                except BlockingIOError:
                    break
                except OSError:
                    return
                n += 1
            if n:
                self.last_rx = clock()
                self.count += n
            time.sleep(self.POLL_S)


def hep_chunks(datagram: bytes) -> dict[int, bytes]:
    """The chunks of one HEPv3 packet by type (vendor 0 only); empty if it is not HEPv3."""
    if datagram[:4] != b"HEP3" or int.from_bytes(datagram[4:6], "big") != len(datagram):
        return {}
    chunks: dict[int, bytes] = {}
    pos = 6
    while pos + 6 <= len(datagram):
        vendor = int.from_bytes(datagram[pos : pos + 2], "big")
        ctype = int.from_bytes(datagram[pos + 2 : pos + 4], "big")
        clen = int.from_bytes(datagram[pos + 4 : pos + 6], "big")
        if clen < 6 or pos + clen > len(datagram):
            return {}
        if vendor == 0:
            chunks[ctype] = datagram[pos + 6 : pos + clen]
        pos += clen
    return chunks if pos == len(datagram) else {}


Key = tuple[int, str, bytes]  # (client port, direction, digest of the payload)


def truth_keys(gt: dict[str, Any]) -> collections.Counter[Key]:
    ports = [c["client_port"] for c in gt["connections"]]
    return collections.Counter(
        (ports[m["conn"]], m["dir"], bench._digest(m["dir"], m["text"])) for m in gt["messages"]
    )


def received_keys(
    datagrams: list[bytes], server_ports: set[int]
) -> tuple[collections.Counter[Key], int]:
    """(client port, direction, payload digest) of every HEP datagram; and how many were
    not well-formed HEPv3 SIP packets."""
    got: collections.Counter[Key] = collections.Counter()
    bad = 0
    for d in datagrams:
        c = hep_chunks(d)
        if 0x000F not in c or 0x0007 not in c or 0x0008 not in c or c.get(0x000B) != b"\x01":
            bad += 1
            continue
        sport = int.from_bytes(c[0x0007], "big")
        dport = int.from_bytes(c[0x0008], "big")
        direction, client = ("c2s", sport) if dport in server_ports else ("s2c", dport)
        text = c[0x000F].decode("utf-8", "replace")
        got[(client, direction, bench._digest(direction, text))] += 1
    return got, bad


# --------------------------------------------------------------------------
# the agent and tcpreplay
# --------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a live process (all its threads) in seconds, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields 3.. (after "pid (comm)")
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def tree_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process and its live children (the agent's worker processes)."""
    user, system = proc_times(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        with contextlib.suppress(OSError, ValueError, IndexError):
            u, s = proc_times(int(child))
            user, system = user + u, system + s
    return user, system


def proc_cpu_s(pid: int) -> float:
    return sum(tree_times(pid))


def proc_cpu_s_alone(pid: int) -> float:
    try:
        return sum(proc_times(pid))
    except OSError:
        return 0.0


_PIDS = re.compile(r"capturing on \S+ with \d+ workers \(pids ([\d, ]+)\)")


def worker_pids(stderr: str) -> list[int]:
    """The workers' process ids, in the order of their index (the agent logs them)."""
    m = _PIDS.search(stderr)
    return [int(pid) for pid in m.group(1).split(", ")] if m else []


_WORKERS = re.compile(
    r"^workers: (\d+); packets ([\d /]+), SIP messages ([\d /]+)(?:, kernel drops ([\d /]+))?; "
    r"(\d+) restarted; CPU ([\d. /]+) s$",
    re.M,
)


def per_worker(stderr: str) -> list[dict[str, Any]]:
    """Each worker's packets, messages, kernel drops and CPU time, from the stats' workers
    line (none without workers)."""
    m = _WORKERS.search(stderr)
    if not m:
        return []

    def split(text: str | None, kind: type = int) -> list[Any]:
        return [kind(x) for x in text.split(" / ")] if text else []

    packets, sips, drops = split(m.group(2)), split(m.group(3)), split(m.group(4))
    cpus = split(m.group(6), float)
    return [
        {
            "packets": p,
            "sip_messages": s,
            "kernel_dropped": d,
            "cpu_s": c,
            "msgs_per_cpu_s": round(s / c) if c else None,
        }
        for p, s, d, c in zip(packets, sips, drops or [0] * len(packets), cpus, strict=False)
    ]


_KERNEL = re.compile(
    r"^kernel: (\d+) packets received, (\d+) dropped, (\d+) dropped by the interface", re.M
)
_READ = re.compile(r"^packets: (\d+) read\b", re.M)
_RECORDS = re.compile(r"^TLS records: (\d+) decrypted, (\d+) failed authentication", re.M)
_GAPS = re.compile(r"\bgaps (\d+) \((\d+) bytes\)", re.M)
_REPLAY = re.compile(r"Actual: (\d+) packets \((\d+) bytes\) sent in ([\d.]+) seconds")


def stat_int(rx: re.Pattern[str], text: str, what: str, group: int = 1) -> int:
    m = rx.search(text)
    if not m:
        raise bench.WrongOutput(f"no {what!r} line in the agent's stats:\n{text[-3000:]}")
    return int(m.group(group))


def wait_reap(pid: int, timeout: float) -> tuple[int, Any] | None:
    """os.wait4 with a timeout: (exit code, rusage), or None if still running."""
    deadline = time.monotonic() + timeout
    while True:
        done, status, ru = os.wait4(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), ru
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def start_agent(argv: list[str], err: Any) -> tuple[subprocess.Popen[bytes], float]:
    """Start the agent with stderr to the file ``err``; return it once it logs "capturing
    on", with its start-up time in seconds."""
    agent = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=err,
        env=bench.AGENT_ENV,
    )
    t_spawn = time.perf_counter()
    while b"capturing on" not in Path(err.name).read_bytes():
        if agent.poll() is not None:
            raise bench.WrongOutput(
                f"agent exited ({agent.returncode}) before capturing:\n"
                + Path(err.name).read_text(errors="replace")[-3000:]
            )
        if time.perf_counter() - t_spawn > READY_TIMEOUT_S:
            agent.kill()
            raise bench.WrongOutput("agent did not log 'capturing on' in time")
        time.sleep(0.02)
    return agent, round(time.perf_counter() - t_spawn, 3)


def wait_caught_up(pid: int, received: Callable[[], int]) -> float:
    """Wait until no new message arrived (``received()`` unchanged) and the agent was (nearly)
    idle for CATCH_UP_QUIET_S; return the time (perf_counter) of its last sign of work."""
    started = time.perf_counter()
    last_n, last_cpu, quiet_since = received(), proc_cpu_s(pid), started
    while True:
        time.sleep(0.1)
        now, n, cpu = time.perf_counter(), received(), proc_cpu_s(pid)
        busy = cpu - last_cpu > 0.05 * (now - quiet_since) + 0.02
        if n != last_n or busy:
            last_n, last_cpu, quiet_since = n, cpu, now
        elif now - quiet_since >= CATCH_UP_QUIET_S:
            return quiet_since
        if now - started > CATCH_UP_MAX_S:
            return quiet_since


def stop_agent(agent: subprocess.Popen[bytes]) -> Any:
    """SIGTERM; the agent's resource usage once it exited (its exit status is left in
    ``agent.returncode`` for the caller to judge).  WrongOutput if it is still running
    60 s later."""
    agent.send_signal(signal.SIGTERM)
    reaped = wait_reap(agent.pid, 60)
    if reaped is None:
        agent.kill()
        wait_reap(agent.pid, 10)
        raise bench.WrongOutput("agent did not exit within 60 s of SIGTERM")
    agent.returncode, agent_ru = reaped
    return agent_ru


def agent_argv(port: int, buffer_kib: int | None, workers: int = 1) -> list[str]:
    argv = [
        *bench.agent_cmd(),
        "-i", "lo",
        "-f", "tcp port 5061",
        "-k", str(bench.KEY),
        "--hep", f"udp://127.0.0.1:{port}",
        "-v",
        "--stats-interval", "3600",
    ]  # fmt: skip
    if buffer_kib is not None:
        argv += ["-B", str(buffer_kib)]
    if workers != 1:
        argv += ["--workers", str(workers)]
    return argv


def replay_argv(pcap: Path, rate: str) -> list[str]:
    # --timer=nano: nanosleep between packets.  The default (gtod) busy-waits and takes a
    # whole core at low rates (6-7 CPU-s for a 7 s replay), on a 2-core machine shared with
    # the agent; nano keeps the rate as exactly and uses ~1 CPU-s for the same replay.
    speed = ["--topspeed"] if rate == "top" else ["--timer=nano", f"--pps={int(rate)}"]
    return ["tcpreplay", "-q", "-i", "lo", *speed, str(pcap)]


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
        res["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
        agent, res["startup_s"] = start_agent(agent_argv(rx.port, buffer_kib, workers), err)
        if profile is not None:
            spy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(agent.pid), "--format", "raw",
                 "--rate", "200", "-o", str(profile)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)  # let py-spy attach
        user_ready, sys_ready = tree_times(agent.pid)
        pids = worker_pids(Path(err.name).read_text(errors="replace"))
        workers_ready = [proc_cpu_s_alone(pid) for pid in pids]

        # the replay
        t0 = time.perf_counter()
        tr = subprocess.Popen(
            replay_argv(pcap, rate),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        out = tr.stdout.read().decode("utf-8", "replace") if tr.stdout else ""
        _, status, tr_ru = os.wait4(tr.pid, 0)
        t1 = time.perf_counter()
        tr.returncode = os.waitstatus_to_exitcode(status)
        m = _REPLAY.search(out)
        if tr.returncode != 0 or not m:
            raise RuntimeError(f"tcpreplay failed ({tr.returncode}):\n{out[-2000:]}")
        sent, replay_s = int(m.group(1)), float(m.group(3))
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
            raise bench.WrongOutput(f"agent exit status {agent.returncode}:\n{stderr[-3000:]}")
    finally:
        for p in (agent, spy):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        rx.close()
        err.close()

    k = _KERNEL.search(stderr)
    if not k:
        raise bench.WrongOutput(f"no 'kernel:' line in the agent's stats:\n{stderr[-3000:]}")
    k_recv, k_drop, k_ifdrop = (int(x) for x in k.groups())
    read = stat_int(_READ, stderr, "packets: N read")
    sip = bench.stat_sip(bench.Run(0, 0, 0, 0, 0, stderr))
    hep = bench._HEP_STAT.search(stderr)
    hep_sent = int(hep.group(1)) if hep else -1
    hep_errors = int(hep.group(2) or 0) if hep else -1
    rec_ok = stat_int(_RECORDS, stderr, "TLS records")
    rec_failed = stat_int(_RECORDS, stderr, "TLS records", 2)
    gaps = stat_int(_GAPS, stderr, "gaps")

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
            "per_worker": per_worker(stderr),
            "worker_window_cpu_s": [
                round(b - a, 3) for a, b in zip(workers_ready, workers_done, strict=False)
            ],
            "tcpreplay_cpu_s": round(tr_ru.ru_utime + tr_ru.ru_stime, 2),
            "stats": stderr[stderr.find("--- captagent-tls stats ---") :].strip(),
        }
    )
    res["zero_drops"] = k_drop == 0 and k_ifdrop == 0
    res["foreign_traffic"] = read != packets and res["zero_drops"]
    res["complete"] = received == expected and missing == 0 and unexpected == 0
    res["kept_up"] = res["lag_s"] <= KEPT_UP_LAG_S

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


# --------------------------------------------------------------------------
# profile summary (py-spy --format raw: "frame;frame;... count" per line)
# --------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    own: collections.Counter[str] = collections.Counter()
    own_fn: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        own[_short(frames[-1], with_line=True)] += count
        own_fn[_short(frames[-1], with_line=False)] += count
        for name in {_short(f, with_line=False) for f in frames}:
            incl[name] += count
    pct = (lambda c: round(100.0 * c / total, 1)) if total else (lambda c: 0.0)
    return {
        "samples": total,
        "self": [(name, pct(c)) for name, c in own.most_common(top)],
        "self_by_function": [(name, pct(c)) for name, c in own_fn.most_common(top)],
        "inclusive": [(name, pct(c)) for name, c in incl.most_common(top)],
    }


def _short(frame: str, with_line: bool) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    file = m["file"]
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    where = f"{file}:{m['line']}" if with_line and m["line"] else file
    return f"{m['func']} ({where})"


# --------------------------------------------------------------------------
# report
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


def parse_rates(text: str) -> list[str]:
    rates = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part not in ("top", "topspeed") and not (part.isdigit() and int(part) > 0):
            raise argparse.ArgumentTypeError(f"bad rate {part!r}: packets/s or 'top'")
        rates.append("top" if part.startswith("top") else str(int(part)))
    if not rates:
        raise argparse.ArgumentTypeError("no rates")
    return rates


def pcap_packets(pcap: Path) -> int:
    """Packets in a classic pcap file (the bench captures are pcap, not pcapng)."""
    from captagent_tls.capture.files import CaptureReader

    with CaptureReader(str(pcap)) as reader:
        return sum(1 for _ in reader)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out",
        type=Path,
        default=bench.ROOT / "bench" / "out",
        help="captures and results (default bench/out, git-ignored)",
    )
    ap.add_argument(
        "--rates",
        type=parse_rates,
        help=f"comma-separated packets/s for tcpreplay --pps, 'top' for --topspeed "
        f"(default {FULL_RATES}; --quick: {QUICK_RATES})",
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

    if os.geteuid() != 0:
        raise SystemExit("live capture and tcpreplay need root")
    for tool in ("tcpreplay", *(("py-spy",) if args.profile else ())):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    sizes = bench.QUICK if args.quick else bench.FULL
    prefix = "quick-" if args.quick else ""
    rates = args.rates or parse_rates(QUICK_RATES if args.quick else FULL_RATES)
    rev = bench.export_rev(args.rev, out / "rev-src") if args.rev else None

    gt, _ = bench.make_capture(out, prefix + "bulk", "bulk", sizes["bulk"], reuse=True)
    pcap, _ = bench.capture_paths(out, prefix + "bulk")
    expected = len(gt["messages"])
    truth = truth_keys(gt)
    server_ports = {c["server_port"] for c in gt["connections"]}
    connections = len(gt["connections"])
    del gt
    packets = pcap_packets(pcap)
    print(
        f"[live] {pcap.name}: {packets:,} packets, {expected:,} SIP messages, "
        f"{connections} connections; rates {','.join(rates)}",
        flush=True,
    )

    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "machine": bench.machine_info(),
        "agent": " ".join(agent_argv(0, args.buffer_kib, args.workers)).replace(
            "127.0.0.1:0", "127.0.0.1:PORT"
        ),
        "workers": args.workers,
        "source": {"rev": rev[:12]} if rev else bench.source_info(),
        "capture": {"file": pcap.name, "packets": packets, "messages": expected},
        "target_msgs_per_s_per_core": TARGET_MSGS_PER_CORE,
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
        except bench.WrongOutput as exc:
            failures.append(f"rate {rate}: {exc}")
            print(f"    rate {rate}: WRONG OUTPUT: {exc}", flush=True)
            break
        results["runs"].append(r)
        failures += [f"rate {rate}: {p}" for p in r["problems"]]
        print(
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
            + ("".join(f"\n      PROBLEM: {p}" for p in r["problems"])),
            flush=True,
        )
        if profile is not None and profile.exists():
            profiles[rate] = summarize_profile(profile)
        if not r["zero_drops"] and not args.all_rates:
            break

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
    results["profiles"] = profiles
    results["failures"] = failures
    name = f"live-results{'-quick' if args.quick else ''}{'-profiled' if args.profile else ''}.json"
    (out / name).write_text(json.dumps(results, indent=1) + "\n")

    m = results["machine"]
    src = results["source"]
    code = f"src/ of git revision {rev[:12]}" if rev else f"commit {src['commit']}" + (
        f" + uncommitted changes in {len(src['src_changes'])} src files"
        if src["src_changes"] else ""
    )  # fmt: skip
    print()
    print(
        f"captagent-tls live benchmark{' (QUICK)' if args.quick else ''} - {m.get('cpu', '?')}, "
        f"{m['cpus']} CPUs, load {m.get('loadavg_at_start')}, Python {m['python']}; {code}"
    )
    print(
        f"  replay of {pcap.name} ({packets:,} packets, {expected:,} SIP messages) onto lo "
        f"with tcpreplay; agent: {results['agent']}"
        + ("; PROFILED with py-spy" if args.profile else "")
    )
    if results["runs"]:
        print(render(results["runs"]))
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
        f"  best: {results['best_achieved_msgs_s'] or 0:,} msg/s shipped, {per_cpu:,} messages "
        f"per agent CPU-second; target >= {TARGET_MSGS_PER_CORE:,} msg/s per core with zero "
        f"drops {bench.verdict(met)}"
    )
    for rate, p in profiles.items():
        print(f"  py-spy at rate {rate} ({p['samples']} samples), top self time:")
        for fn, pct in p["self"][:10]:
            print(f"    {pct:5.1f}%  {fn}")
    print(f"  results in {out / name}")
    if failures:
        print("\nFAILED (wrong output):\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
