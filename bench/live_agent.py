"""An agent capturing live on ``lo``: its command line, its start (once it logs "capturing
on"), waiting until it has caught up with a replay, and its stop."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import revision
from bench.paths import KEY
from bench.processes import proc_cpu_s, wait_reap
from bench.stats import WrongOutput

READY_TIMEOUT_S = 60.0
CATCH_UP_QUIET_S = 2.0  # caught up: no datagram and (almost) no agent CPU for this long
CATCH_UP_MAX_S = 600.0


def capturing_argv(port: int, hep: str, *options: str) -> list[str]:
    """Our agent capturing the server port ``port`` on ``lo``, shipping HEP to ``hep``, with
    ``options`` before the verbose stats (a final summary only)."""
    return [
        *revision.agent_cmd(),
        "-i", "lo",
        "-f", f"tcp port {port}",
        "-k", str(KEY),
        "--hep", hep,
        *options,
        "-v",
        "--stats-interval", "3600",
    ]  # fmt: skip


def start_agent(argv: list[str], err: Any) -> tuple[subprocess.Popen[bytes], float]:
    """Start the agent with stderr to the file ``err``; return it once it logs "capturing
    on", with its start-up time in seconds."""
    agent = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=err,
        env=revision.AGENT_ENV,
    )
    t_spawn = time.perf_counter()
    while b"capturing on" not in Path(err.name).read_bytes():
        if agent.poll() is not None:
            raise WrongOutput(
                f"agent exited ({agent.returncode}) before capturing:\n"
                + Path(err.name).read_text(errors="replace")[-3000:]
            )
        if time.perf_counter() - t_spawn > READY_TIMEOUT_S:
            agent.kill()
            raise WrongOutput("agent did not log 'capturing on' in time")
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
        raise WrongOutput("agent did not exit within 60 s of SIGTERM")
    agent.returncode, agent_ru = reaped
    return agent_ru
