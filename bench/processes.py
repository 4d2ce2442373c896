"""Running and timing processes: wall time from spawn to reap, CPU time and peak RSS of a
finished command (through GNU time), and the CPU time and memory of a live one (/proc)."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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


@functools.cache
def use_gnu_time() -> bool:
    """Whether GNU time is there to measure peak RSS (see :func:`measure`); asked once."""
    if not os.access(GNU_TIME, os.X_OK):
        return False
    r = subprocess.run([GNU_TIME, "-f", "%M", "true"], capture_output=True, text=True)
    return r.returncode == 0 and r.stderr.strip().isdigit()


def spawn_and_reap(argv: list[str], **popen: Any) -> tuple[int, float, Any]:
    """Start ``argv`` and wait for it: (exit code, wall seconds from spawn to reap, its
    rusage from ``os.wait4``)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, **popen)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, ru


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
    gnu_time = use_gnu_time()
    with tempfile.NamedTemporaryFile("w+b") as err, tempfile.NamedTemporaryFile("r") as tf:
        argv = [GNU_TIME, "-o", tf.name, "-f", "MAXRSS_KB=%M", *cmd] if gnu_time else cmd
        out_f = open(stdout, "wb") if stdout else open(os.devnull, "wb")  # noqa: SIM115
        try:
            returncode, wall, ru = spawn_and_reap(
                argv, stdin=subprocess.DEVNULL, stdout=out_f, stderr=err, env=env
            )
        finally:
            out_f.close()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
        maxrss_kb = ru.ru_maxrss  # Linux: KiB
        exact = False
        if gnu_time:
            m = re.search(r"MAXRSS_KB=(\d+)", tf.read())
            if m:
                maxrss_kb, exact = int(m.group(1)), True
    return Run(
        wall_s=wall,
        user_s=ru.ru_utime,
        sys_s=ru.ru_stime,
        maxrss_mb=maxrss_kb / 1024.0,
        returncode=returncode,
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


def loadavg() -> list[float]:
    """The load averages (1, 5, 15 minutes), as the results store them."""
    return [round(x, 2) for x in os.getloadavg()]


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


# --------------------------------------------------------------------------
# a live process, from /proc
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


def proc_status_kib(pid: int, *fields: str) -> dict[str, int]:
    """``VmRSS`` and friends from /proc/PID/status, in KiB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in fields:
            values[name] = int(rest.split()[0])
    return values
