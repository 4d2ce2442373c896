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
import collections
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fixtures import peers

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"

KEY = peers.KEYS_DIR / peers.SERVER_KEY

# Performance targets (they live here, not in the tests).
TARGET_TSHARK_RATIO = 15.0  # bulk: tshark time / our time >=
TARGET_RSS_MB = 150.0  # bulk: our peak RSS <
TARGET_CEILING_RATIO = 0.85  # handshakes: RSA ceiling time / our time >=

FULL = {
    "bulk": {"connections": 20, "messages": 56_000, "cipher": "AES256-GCM-SHA384"},
    "handshakes": {"handshakes": 2000, "concurrency": 8, "cipher": "AES256-GCM-SHA384"},
}
QUICK = {
    "bulk": {"connections": 4, "messages": 2_000, "cipher": "AES256-GCM-SHA384"},
    "handshakes": {"handshakes": 100, "concurrency": 8, "cipher": "AES256-GCM-SHA384"},
}


class WrongOutput(Exception):
    """An output differs from the ground truth: the benchmark fails."""


# --------------------------------------------------------------------------
# process measurement
# --------------------------------------------------------------------------


@dataclass
class Run:
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_mb: float
    returncode: int
    stderr: str
    stdout_path: Path | None = None
    rss_exact: bool = True


GNU_TIME = "/usr/bin/time"


def have_gnu_time() -> bool:
    if not os.access(GNU_TIME, os.X_OK):
        return False
    r = subprocess.run([GNU_TIME, "-f", "%M", "true"], capture_output=True, text=True)
    return r.returncode == 0 and r.stderr.strip().isdigit()


USE_GNU_TIME = have_gnu_time()


def measure(
    cmd: list[str], *, stdout: Path | None = None, env: dict[str, str] | None = None
) -> Run:
    """Run ``cmd`` once: wall time around spawn..reap, CPU time and peak RSS.

    Peak RSS must not come from this (large) process's point of view: a child
    spawned from here starts with this process's address space, and Linux
    carries that high-water mark into the child's ``ru_maxrss`` across exec.
    So the command is started by GNU time (``/usr/bin/time -f %M``, a ~1 MB
    process) and its figure is used; without GNU time, ``os.wait4`` of the
    direct child is used and the figure is an upper bound (``rss_exact`` false).
    stdout goes to /dev/null unless ``stdout`` names a file; stderr to a
    temporary file (so a full pipe can never stall the child).
    """
    with tempfile.NamedTemporaryFile("w+b") as err, tempfile.NamedTemporaryFile("r") as tf:
        argv = [GNU_TIME, "-o", tf.name, "-f", "MAXRSS_KB=%M", *cmd] if USE_GNU_TIME else cmd
        out_f = open(stdout, "wb") if stdout else open(os.devnull, "wb")  # noqa: SIM115
        try:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out_f, stderr=err, env=env
            )
            _, status, ru = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            out_f.close()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
        maxrss_kb = ru.ru_maxrss  # Linux: KiB
        exact = False
        if USE_GNU_TIME:
            m = re.search(r"MAXRSS_KB=(\d+)", tf.read())
            if m:
                maxrss_kb, exact = int(m.group(1)), True
    return Run(
        wall_s=wall,
        user_s=ru.ru_utime,
        sys_s=ru.ru_stime,
        maxrss_mb=maxrss_kb / 1024.0,
        returncode=proc.returncode,
        stderr=stderr,
        stdout_path=stdout,
        rss_exact=exact,
    )


def summarize(runs: list[Run]) -> dict[str, Any]:
    best = min(runs, key=lambda r: r.wall_s)
    return {
        "n": len(runs),
        "best_s": round(best.wall_s, 3),
        "runs_s": [round(r.wall_s, 3) for r in runs],
        "best_user_s": round(best.user_s, 3),
        "best_sys_s": round(best.sys_s, 3),
        "peak_rss_mb": round(max(r.maxrss_mb for r in runs), 1),
        "peak_rss_exact": all(r.rss_exact for r in runs),
    }


class UdpDrain:
    """A local UDP 'collector' that reads and counts datagrams on a thread."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # SO_RCVBUFFORCE (33 on Linux; Python has no constant) lets root pass rmem_max
        force = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform == "linux" else None)
        for opt in (force, socket.SO_RCVBUF):
            if opt is None:
                continue
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, opt, 64 << 20)
                break
        self.rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self.hep3 = 0
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        recv = self.sock.recv
        while not self._stop.is_set():
            try:
                data = recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.count += 1
            self.bytes += len(data)
            if data[:4] == b"HEP3":
                self.hep3 += 1

    def settle(self, quiet: float = 0.5) -> int:
        """Wait until no datagram arrived for ``quiet`` seconds; return the count so far."""
        last = -1
        while last != self.count:
            last = self.count
            time.sleep(quiet)
        return self.count

    def reset(self) -> None:
        self.settle(0.2)
        self.count = self.hep3 = self.bytes = 0

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


# --------------------------------------------------------------------------
# captures and ground truth
# --------------------------------------------------------------------------


def capture_paths(out: Path, name: str) -> tuple[Path, Path]:
    return out / f"{name}.pcap", out / f"{name}.json"


def _matches(gt: dict[str, Any], kind: str, want: dict[str, Any]) -> bool:
    s = gt.get("settings", {})
    if kind == "bulk":
        ok = s.get("connections") == want["connections"] and s.get("messages") == want["messages"]
    else:
        ok = s.get("handshakes") == want["handshakes"]
    ciphers = {c["cipher"] for c in gt.get("connections", [])}
    return ok and ciphers == {want["cipher"]}


def make_capture(
    out: Path, name: str, kind: str, size: dict[str, Any], reuse: bool, port: int = 5061
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Generate (or reuse) one capture; returns (ground truth, generation info).

    ``port`` is the server's port while recording (tcpdump filters on it, so two recordings
    on different ports do not see each other's traffic)."""
    pcap, js = capture_paths(out, name)
    if reuse and pcap.exists() and js.exists():
        gt = json.loads(js.read_text())
        if _matches(gt, kind, size):
            print(f"[{name}] reusing {pcap} ({pcap.stat().st_size / 1e6:.1f} MB)", flush=True)
            return gt, {"reused": True, "seconds": None, "pcap_mb": _mb(pcap)}
        print(f"[{name}] {js} is for other settings: regenerating", flush=True)
    for tool in ("tcpdump",):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed to record the captures (apt-get install {tool})")
    if os.geteuid() != 0:
        raise SystemExit("recording on loopback needs root (tcpdump)")
    out.mkdir(parents=True, exist_ok=True)
    js.unlink(missing_ok=True)  # a failed recording must not leave a stale pair for --reuse
    print(f"[{name}] recording {kind} capture {size} ...", flush=True)
    t0 = time.perf_counter()
    gt = _record(pcap, js, name, kind, size, port)
    secs = time.perf_counter() - t0
    print(f"[{name}] recorded {_mb(pcap):.1f} MB in {secs:.1f} s", flush=True)
    return gt, {"reused": False, "seconds": round(secs, 1), "pcap_mb": _mb(pcap)}


def _record(
    pcap: Path, js: Path, name: str, kind: str, size: dict[str, Any], port: int = 5061
) -> dict[str, Any]:
    if kind == "bulk":
        gt = peers.make_bulk_capture(
            pcap,
            port=port,
            connections=size["connections"],
            messages=size["messages"],
            cipher=size["cipher"],
            json_path=js,
        )
    else:
        total = size["handshakes"]
        step = max(1, total // 10)
        done = [0]
        lock = threading.Lock()

        def progress(_index: int) -> None:
            with lock:
                done[0] += 1
                if done[0] % step == 0:
                    print(f"[{name}]   {done[0]}/{total} handshakes", flush=True)

        gt = peers.make_handshake_capture(
            pcap,
            port=port,
            handshakes=total,
            concurrency=size["concurrency"],
            cipher=size["cipher"],
            json_path=js,
            progress=progress,
        )
    return gt


def _mb(p: Path) -> float:
    return round(p.stat().st_size / 1e6, 1)


_CALL_ID = re.compile(r"^(?:Call-ID|i)[ \t]*:[ \t]*(.*?)[ \t]*$", re.M | re.I)


def call_id(text: str) -> str:
    m = _CALL_ID.search(text.split("\r\n\r\n", 1)[0].replace("\r\n", "\n"))
    return m.group(1) if m else ""


def _digest(direction: str, text: str) -> bytes:
    return hashlib.blake2b(f"{direction}\0{text}".encode(), digest_size=16).digest()


# --------------------------------------------------------------------------
# our agent
# --------------------------------------------------------------------------


#: environment of our agent's runs; with --rev, PYTHONPATH points at an exported tree
AGENT_ENV: dict[str, str] | None = None


def export_rev(rev: str, dest: Path) -> str:
    """Export ``src/`` of git revision ``rev`` under ``dest`` and run the agent from
    there (PYTHONPATH comes before the editable install's path entry)."""
    global AGENT_ENV
    full = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", full, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(dest / "src")
    where = subprocess.run(
        [sys.executable, "-c", "import captagent_tls; print(captagent_tls.__file__)"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not where.startswith(str(dest)):
        raise SystemExit(f"--rev: captagent_tls still imports from {where}")
    AGENT_ENV = env
    return full


def agent_cmd() -> list[str]:
    """The console script next to this interpreter (not a pyenv/asdf shim, whose
    start-up would be timed too); ``python -m captagent_tls`` as a fallback."""
    exe = Path(sys.executable).parent / "captagent-tls"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "captagent_tls"]


# the stats summary on stderr ("SIP messages: N ...", "HEP host:port: N sent, E send errors ...")
_SIP_STAT = re.compile(r"^SIP messages: (\d+)\b", re.M)
_HEP_STAT = re.compile(r"^HEP \S+: (\d+) sent\b(?:, (\d+) send errors)?", re.M)


def stat_sip(run: Run) -> int:
    m = _SIP_STAT.search(run.stderr)
    if not m:
        raise WrongOutput(f"no 'SIP messages:' line in our stats:\n{run.stderr[-2000:]}")
    return int(m.group(1))


def check_ok(run: Run, what: str) -> None:
    if run.returncode != 0:
        raise WrongOutput(f"{what}: exit status {run.returncode}\n{run.stderr[-3000:]}")


def verify_ours(pcap: Path, gt: dict[str, Any], out: Path, keep: bool) -> dict[str, Any]:
    """One untimed run with --json into a file; every message checked against the truth."""
    jl = out / f"{pcap.stem}.ours.jsonl"
    run = measure(
        [*agent_cmd(), "-r", str(pcap), "-k", str(KEY), "--json"], stdout=jl, env=AGENT_ENV
    )
    check_ok(run, "verification run")
    want = collections.Counter(_digest(m["dir"], m["text"]) for m in gt["messages"])
    want_ids = collections.Counter(call_id(m["text"]) for m in gt["messages"])
    got: collections.Counter[bytes] = collections.Counter()
    got_ids: collections.Counter[str] = collections.Counter()
    n_sip = n_other = 0
    with open(jl, encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            if obj.get("kind") != "sip":
                n_other += 1
                continue
            n_sip += 1
            got[_digest(obj.get("direction", ""), obj.get("payload", ""))] += 1
            got_ids[obj.get("call_id") or ""] += 1
    if not keep:
        jl.unlink()
    problems = []
    if n_sip != len(gt["messages"]):
        problems.append(f"{n_sip} SIP messages in our JSON, ground truth {len(gt['messages'])}")
    if n_other:
        problems.append(f"{n_other} non-SIP JSON lines")
    if got != want:
        missing = sum((want - got).values())
        extra = sum((got - want).values())
        problems.append(f"payload/direction mismatch: {missing} missing, {extra} unexpected")
    if got_ids != want_ids:
        problems.append("Call-ID values differ from the ground truth")
    if stat_sip(run) != len(gt["messages"]):
        problems.append(f"stats say {stat_sip(run)} SIP messages")
    if problems:
        raise WrongOutput(f"{pcap.name}: " + "; ".join(problems))
    return {"sip_messages": n_sip, "payloads_match": True, "call_ids_match": True}


def time_ours_json(
    pcap: Path, expected: int, runs: int, after_each: RsaCeiling | None = None
) -> dict[str, Any]:
    rs = []
    for i in range(runs):
        r = measure([*agent_cmd(), "-r", str(pcap), "-k", str(KEY), "--json"], env=AGENT_ENV)
        check_ok(r, f"json run {i + 1}")
        n = stat_sip(r)
        if n != expected:
            raise WrongOutput(f"{pcap.name} json run {i + 1}: {n} SIP messages, want {expected}")
        print(
            f"    ours --json  run {i + 1}/{runs}: {r.wall_s:8.2f} s  {r.maxrss_mb:6.1f} MB",
            flush=True,
        )
        rs.append(r)
        if after_each is not None:
            after_each.run()
    return summarize(rs)


_WORKERS_STAT = re.compile(
    r"^workers: (\d+); packets ([\d /]+), SIP messages ([\d /]+).*; CPU ([\d. /]+) s$", re.M
)


def time_workers(pcap: Path, expected: int, runs: int, counts: list[int]) -> dict[str, Any]:
    """``--json --workers N`` for each N: wall time, the CPU time of all processes together
    (workers are reaped by the agent, so their time is in its rusage), and each worker's own
    CPU time and share of the messages (the stats' workers line)."""
    results: dict[str, Any] = {}
    for n in counts:
        rs = []
        shares = []
        for i in range(runs):
            load = [round(x, 2) for x in os.getloadavg()]
            r = measure(
                [*agent_cmd(), "-r", str(pcap), "-k", str(KEY), "--json", "--workers", str(n)],
                env=AGENT_ENV,
            )
            check_ok(r, f"--workers {n} run {i + 1}")
            got = stat_sip(r)
            if got != expected:
                raise WrongOutput(f"--workers {n} run {i + 1}: {got} SIP messages, want {expected}")
            m = _WORKERS_STAT.search(r.stderr)
            if n > 1 and not m:
                raise WrongOutput(f"--workers {n}: no workers line in the stats")
            share = {
                "load": load,
                "cpu_s": round(r.user_s + r.sys_s, 3),
                "worker_cpu_s": [float(x) for x in m.group(4).split(" / ")] if m else [],
                "worker_messages": [int(x) for x in m.group(3).split(" / ")] if m else [],
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
        r = measure([*agent_cmd(), "-r", str(empty), "-k", str(KEY), "--json"], env=AGENT_ENV)
        check_ok(r, f"start-up run {i + 1}")
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
            r = measure(
                [*agent_cmd(), "-r", str(pcap), "-k", str(KEY), "--hep", hep], env=AGENT_ENV
            )
            check_ok(r, f"hep run {i + 1}")
            n = stat_sip(r)
            m = _HEP_STAT.search(r.stderr)
            sent = int(m.group(1)) if m else -1
            errors = int(m.group(2) or 0) if m else -1
            if n != expected or sent != expected or errors:
                raise WrongOutput(
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


# --------------------------------------------------------------------------
# tshark
# --------------------------------------------------------------------------


def tshark_cmd(pcap: Path, ports: list[int]) -> list[str]:
    cmd = ["tshark", "-n", "-r", str(pcap), "-o", f'uat:rsa_keys:"{KEY}",""']
    for p in ports:
        cmd += ["-d", f"tcp.port=={p},tls"]
    if ports != [5061]:  # SIP is handed TLS payload on sip.tls.port (5061 by default)
        cmd += ["-o", f"sip.tls.port:{ports[0]}"]
    return [*cmd, "-Y", "sip", "-T", "fields", "-e", "sip.Call-ID"]


def time_tshark(pcap: Path, gt: dict[str, Any], runs: int, out: Path) -> dict[str, Any] | None:
    if shutil.which("tshark") is None:
        print("    tshark not found: skipped", flush=True)
        return None
    ports = sorted({c["server_port"] for c in gt["connections"]})
    cmd = tshark_cmd(pcap, ports)
    want_ids = collections.Counter(call_id(m["text"]) for m in gt["messages"])
    expected = len(gt["messages"])
    rs = []
    counts = []
    tmp = out / f"{pcap.stem}.tshark.txt"
    try:
        for i in range(runs):
            r = measure(cmd, stdout=tmp)
            if r.returncode != 0:
                raise RuntimeError(f"tshark failed ({r.returncode}): {r.stderr[-2000:]}")
            ids: collections.Counter[str] = collections.Counter()
            with open(tmp, encoding="utf-8", errors="replace") as f:
                for line in f:
                    # several SIP messages in one frame: comma-separated values
                    ids.update(v for v in line.rstrip("\n").split(",") if v)
            n = sum(ids.values())
            counts.append(n)
            print(
                f"    tshark       run {i + 1}/{runs}: {r.wall_s:8.2f} s  "
                f"{r.maxrss_mb:6.1f} MB  ({n}/{expected} SIP messages decrypted)",
                flush=True,
            )
            rs.append(r)
    finally:
        tmp.unlink(missing_ok=True)
    res = summarize(rs)
    res["command"] = " ".join(cmd)
    res["sip_messages"] = counts[-1]
    res["expected"] = expected
    res["decrypted_all"] = all(c == expected for c in counts) and ids == want_ids
    if not res["decrypted_all"]:
        print(
            f"    WARNING: tshark did not decrypt/dissect every message ({counts}); "
            "its time is not a like-for-like comparison",
            flush=True,
        )
    return res


def tshark_version() -> str | None:
    if shutil.which("tshark") is None:
        return None
    out = subprocess.run(["tshark", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else None


# --------------------------------------------------------------------------
# RSA ceiling
# --------------------------------------------------------------------------


class RsaCeiling:
    """``count`` bare RSA-2048 PKCS#1 v1.5 decryptions of 48-byte pre-master
    secrets encrypted to the server key, timed in this process.  One pass runs
    right after each of our timed ``--json`` runs on the handshake capture, so
    both see about the same machine load; the best pass counts."""

    def __init__(self, count: int) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import padding

        self.key = serialization.load_pem_private_key(KEY.read_bytes(), password=None)
        pub = self.key.public_key()
        self.pad = padding.PKCS1v15()
        self.pms = [b"\x03\x03" + os.urandom(46) for _ in range(count)]
        self.cts = [pub.encrypt(p, self.pad) for p in self.pms]
        self.times: list[float] = []
        if [self.key.decrypt(ct, self.pad) for ct in self.cts] != self.pms:
            raise RuntimeError("RSA ceiling: decryption gave wrong pre-master secrets")

    def run(self) -> float:
        decrypt, pad = self.key.decrypt, self.pad
        t0 = time.perf_counter()
        for ct in self.cts:
            decrypt(ct, pad)
        t = time.perf_counter() - t0
        self.times.append(t)
        print(f"    RSA ceiling  run {len(self.times)}: {t:8.2f} s", flush=True)
        return t

    def result(self) -> dict[str, Any]:
        best = min(self.times)
        return {
            "decryptions": len(self.cts),
            "key_bits": self.key.key_size,
            "best_s": round(best, 3),
            "runs_s": [round(t, 3) for t in self.times],
            "per_op_ms": round(best / len(self.cts) * 1000, 3),
        }


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------


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
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info


def source_info() -> dict[str, Any]:
    """Which code was measured: the commit and whether src/ had local changes."""

    def git(*a: str) -> str:
        r = subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    dirty = [ln[3:] for ln in git("status", "--porcelain", "--", "src").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD") or None, "src_changes": dirty}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "out",
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
    sizes = QUICK if args.quick else FULL
    prefix = "quick-" if args.quick else ""
    kinds = [args.only] if args.only else ["bulk", "handshakes"]
    started = time.perf_counter()
    rev = export_rev(args.rev, out / "rev-src") if args.rev else None
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "runs": args.runs,
        "tshark_runs": 0 if args.no_tshark else args.tshark_runs,
        "machine": machine_info(),
        "agent": " ".join(agent_cmd()),
        "source": {"rev": rev[:12]} if rev else source_info(),
        "peak_rss_via": "GNU time %M" if USE_GNU_TIME else "os.wait4 (upper bound)",
        "targets": {
            "bulk_tshark_over_ours_min": TARGET_TSHARK_RATIO,
            "bulk_peak_rss_mb_max": TARGET_RSS_MB,
            "handshakes_ceiling_over_ours_min": TARGET_CEILING_RATIO,
        },
    }
    failures: list[str] = []

    # 1. captures (recorded before anything is timed)
    gts: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        gt, gen = make_capture(out, prefix + kind, kind, sizes[kind], args.reuse)
        gts[kind] = gt
        results[kind] = {
            "capture": {
                **gen,
                **sizes[kind],
                "messages_truth": len(gt["messages"]),
                "connections_truth": len(gt["connections"]),
            }
        }

    table = Table()
    # 2.-4. timings
    with contextlib.suppress(OSError):
        results["machine"]["loadavg_before_timing"] = [round(x, 2) for x in os.getloadavg()]
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
        pcap, _ = capture_paths(out, prefix + kind)
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

        ours = res["ours_json"]["best_s"]
        ts = res.get("tshark")
        ratio_ts = round(ts["best_s"] / ours, 2) if ts else None
        res["tshark_over_ours"] = ratio_ts
        res["messages_per_s"] = round(expected / ours)
        title = "bulk (throughput)" if kind == "bulk" else "handshakes (RSA)"
        table.add(
            f"== {title}: {pcap.name}",
            f"{_mb(pcap)} MB",
            f"{expected} SIP msgs, {len(gt['connections'])} conns",
        )
        table.add(
            f"ours --json (best of {args.runs})",
            f"{ours:.2f} s",
            f"runs {res['ours_json']['runs_s']}",
        )
        if "ours_hep" in res:
            table.add(
                f"ours --hep (best of {args.runs})",
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
                    w["free_cores_estimate_s"] = round(
                        startup["best_s"] + max(w["worker_cpu_s"]), 3
                    )
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
            table.add(
                "ours peak RSS", f"{rss:.1f} MB", f"target < {TARGET_RSS_MB:g} MB {verdict(met)}"
            )
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

    results["total_s"] = round(time.perf_counter() - started, 1)
    results["failures"] = failures
    name = "results-quick.json" if args.quick else "results.json"
    (out / name).write_text(json.dumps(results, indent=1) + "\n")

    m = results["machine"]
    print()
    print(
        f"captagent-tls benchmark{' (QUICK)' if args.quick else ''} - {m.get('cpu', '?')}, "
        f"{m['cpus']} CPUs, load {m.get('loadavg_before_timing')} before timing, "
        f"Python {m['python']}, "
        f"{m['openssl']}, {m['tshark']}"
    )
    src = results["source"]
    if rev:
        code = f"src/ of git revision {rev[:12]}"
    else:
        code = f"commit {src['commit']}"
        if src["src_changes"]:
            code += f" + uncommitted changes in {len(src['src_changes'])} src files"
    print(f"  code: {code}; peak RSS via {results['peak_rss_via']}")
    if table.rows:
        print(table.render())
    gen = ", ".join(
        f"{k} {results[k]['capture']['seconds']} s"
        if results[k]["capture"]["seconds"] is not None
        else f"{k} reused"
        for k in kinds
    )
    print(f"  recording: {gen}; total {results['total_s']:.0f} s; results in {out / name}")
    if failures:
        print("\nFAILED (wrong output):\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
