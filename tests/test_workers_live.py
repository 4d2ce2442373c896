"""Worker processes capturing live on lo (``--workers 2``): the kernel's fanout group shares
the flows, each message comes out exactly once, keys that arrive late reach every worker, and
a worker that dies is reported and started again.  Needs root; skips otherwise."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.support.live import (
    SERVER_KEY,
    Agent,
    TlsSipServer,
    expected,
    free_port,
    received,
    require_live_capture,
    sip_call,
)

pytestmark = pytest.mark.usefixtures("live_capture")

WORKERS_LINE = re.compile(
    r"^workers: 2; packets (\d+) / (\d+), SIP messages (\d+) / (\d+), "
    r"kernel drops (\d+) / (\d+); (\d+) restarted; CPU [\d. /]+ s$",
    re.M,
)


@pytest.fixture(scope="module")
def live_capture():
    require_live_capture()


def worker_pids(agent: Agent) -> list[int]:
    children = Path(f"/proc/{agent.proc.pid}/task/{agent.proc.pid}/children").read_text()
    return [int(pid) for pid in children.split()]


def shares(stderr: str) -> tuple[int, ...]:
    match = WORKERS_LINE.search(stderr)
    assert match, stderr
    return tuple(int(n) for n in match.groups())


def test_two_workers_each_message_once_and_both_take_flows():
    port = free_port()
    server = TlsSipServer(port)
    with Agent(
        "-f", f"tcp port {port}", "-k", str(SERVER_KEY), "--json", "--workers", "2"
    ) as agent:
        assert "capturing on lo with 2 workers" in agent.stderr
        assert len(worker_pids(agent)) == 2
        calls = [sip_call(server, seed=i) for i in range(12)]
        assert agent.stop() == 0
    server.close()
    assert not server.errors
    assert received(agent.json()) == expected(calls)  # every message, each exactly once
    times = [o["ts"] for o in agent.json()]
    assert times == sorted(times)
    packets_0, packets_1, sip_0, sip_1, *_, restarted = shares(agent.stderr)
    assert packets_0 and packets_1 and sip_0 and sip_1  # both workers had flows
    assert sip_0 + sip_1 == len(expected(calls))
    assert "TLS sessions: 12 full" in agent.stderr
    assert restarted == 0


def test_keys_that_arrive_late_over_the_network_reach_every_worker(tmp_path: Path):
    """TLS 1.3 calls whose key-log lines reach the parent's listener after the traffic: the
    workers that hold the records get the lines, and every message comes out once."""
    port = free_port()
    listen_port = free_port(socket.SOCK_DGRAM)
    server = TlsSipServer(port, tls13=True)
    with Agent(
        "-f",
        f"tcp port {port}",
        "--keylog-listen",
        f"udp://127.0.0.1:{listen_port}",
        "--json",
        "--workers",
        "2",
    ) as agent:
        logs = [tmp_path / f"client{i}.keys" for i in range(8)]
        calls = [sip_call(server, tls13=True, keylog=log, seed=i) for i, log in enumerate(logs)]
        time.sleep(0.5)  # every record has been seen, and waits
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for log in logs:
                for line in log.read_text().splitlines():
                    udp.sendto(line.encode(), ("127.0.0.1", listen_port))
        assert agent.stop(settle=1.5) == 0
    server.close()
    assert received(agent.json()) == expected(calls)
    assert " 0 without keys, 0 dropped waiting for keys" in agent.stderr
    _, _, sip_0, sip_1, *_ = shares(agent.stderr)
    assert sip_0 and sip_1  # both workers decrypted with the lines the parent forwarded


def test_a_killed_worker_is_reported_and_started_again():
    port = free_port()
    server = TlsSipServer(port)
    with Agent(
        "-f", f"tcp port {port}", "-k", str(SERVER_KEY), "--json", "--workers", "2"
    ) as agent:
        before = [sip_call(server, seed=i) for i in range(4)]
        time.sleep(0.5)
        victim = worker_pids(agent)[1]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while "started again" not in agent.stderr and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "started again" in agent.stderr, agent.stderr
        time.sleep(1.5)  # the new worker opens its capture and joins the group
        after = [sip_call(server, seed=100 + i) for i in range(8)]
        assert agent.stop() == 0
    server.close()
    assert f"(pid {victim}) was killed by SIGKILL before it finished" in agent.stderr
    pids = re.findall(r"worker \d started again \(pid (\d+)\)", agent.stderr)
    assert len(pids) == 1 and int(pids[0]) != victim
    got = received(agent.json())
    # the calls after the restart are whole, whichever worker took them; of those before,
    # the killed worker's messages not yet written may be lost, never doubled
    for message in expected(after):
        assert got.count(message) == 1
    assert all(got.count(message) <= 1 for message in expected(before))
    *_, restarted = shares(agent.stderr)
    assert restarted == 1


def test_sighup_reloads_the_keys_of_every_worker(tmp_path: Path):
    import shutil

    from tests.support.live import OTHER_KEY

    port = free_port()
    key = tmp_path / "server.key"
    shutil.copy(OTHER_KEY, key)  # the wrong key first
    server = TlsSipServer(port)
    with Agent("-f", f"tcp port {port}", "-k", str(key), "--json", "--workers", "2") as agent:
        sip_call(server, seed=1)
        time.sleep(0.5)
        shutil.copy(SERVER_KEY, key)
        agent.signal(signal.SIGHUP)
        time.sleep(1.0)
        later = [sip_call(server, seed=2 + i) for i in range(8)]
        assert agent.stop() == 0
    server.close()
    assert received(agent.json()) == expected(later)
    _, _, sip_0, sip_1, *_ = shares(agent.stderr)
    assert sip_0 and sip_1  # both workers decrypted with the new key
