"""What the agent says it did: the lines of its stats summary (stderr) that the benchmarks
read, and :class:`WrongOutput` when a run or its figures are wrong."""

from __future__ import annotations

import re
from typing import Any

from bench.processes import Run


class WrongOutput(Exception):
    """An output differs from the ground truth: the benchmark fails."""


def check_ok(run: Run, what: str) -> None:
    if run.returncode != 0:
        raise WrongOutput(f"{what}: exit status {run.returncode}\n{run.stderr[-3000:]}")


# the stats summary on stderr ("SIP messages: N ...", "HEP host:port: N sent, E send errors ...")
_SIP_STAT = re.compile(r"^SIP messages: (\d+)\b", re.M)
_HEP_STAT = re.compile(r"^HEP \S+: (\d+) sent\b(?:, (\d+) send errors)?", re.M)
_HEP_DROPPED = re.compile(r"(\d+) dropped \(queue full\)")
_KERNEL = re.compile(
    r"^kernel: (\d+) packets received, (\d+) dropped, (\d+) dropped by the interface", re.M
)
READ = re.compile(r"^packets: (\d+) read\b", re.M)
RECORDS = re.compile(r"^TLS records: (\d+) decrypted, (\d+) failed authentication", re.M)
GAPS = re.compile(r"\bgaps (\d+) \((\d+) bytes\)", re.M)
_WORKERS = re.compile(
    r"^workers: (\d+); packets ([\d /]+), SIP messages ([\d /]+)(?:, kernel drops ([\d /]+))?; "
    r"(\d+) restarted; CPU ([\d. /]+) s$",
    re.M,
)
_PIDS = re.compile(r"capturing on \S+ with \d+ workers \(pids ([\d, ]+)\)")


def sip_messages(stderr: str) -> int:
    m = _SIP_STAT.search(stderr)
    if not m:
        raise WrongOutput(f"no 'SIP messages:' line in our stats:\n{stderr[-2000:]}")
    return int(m.group(1))


def stat_int(rx: re.Pattern[str], text: str, what: str, group: int = 1) -> int:
    m = rx.search(text)
    if not m:
        raise WrongOutput(f"no {what!r} line in the agent's stats:\n{text[-3000:]}")
    return int(m.group(group))


def hep_sent(stderr: str) -> tuple[int, int]:
    """(packets sent, send errors) of the first HEP collector; (-1, -1) without its line."""
    m = _HEP_STAT.search(stderr)
    sent = int(m.group(1)) if m else -1
    errors = int(m.group(2) or 0) if m else -1
    return sent, errors


def hep_sent_total(stderr: str) -> int:
    """HEP packets sent, over every collector."""
    return sum(int(m.group(1)) for m in _HEP_STAT.finditer(stderr))


def hep_dropped_total(stderr: str) -> int:
    """HEP packets dropped from full queues, over every collector."""
    return sum(int(x) for x in _HEP_DROPPED.findall(stderr))


def kernel(stderr: str) -> tuple[int, int, int] | None:
    """The kernel's counters of a live capture: (received, dropped, dropped by the
    interface); None without the line."""
    m = _KERNEL.search(stderr)
    if not m:
        return None
    received, dropped, if_dropped = (int(x) for x in m.groups())
    return received, dropped, if_dropped


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


def worker_pids(stderr: str) -> list[int]:
    """The workers' process ids, in the order of their index (the agent logs them)."""
    m = _PIDS.search(stderr)
    return [int(pid) for pid in m.group(1).split(", ")] if m else []


def stats_block(stderr: str) -> str:
    """The agent's final stats summary, as the results keep it."""
    return stderr[stderr.find("--- captagent-tls stats ---") :].strip()
