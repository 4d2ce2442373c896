"""The live capture outlives its interface: a link that goes down, or an interface deleted and
created again, costs the time it was gone, not the agent and not what it holds.

The unit tests drive ``LiveCapture`` over a stand-in for pcapy-ng; the live ones flap a veth
pair under a running agent (root, ``ip``, ``tcpreplay``) and replay the bundled example
around each flap: every message of every replay must come out once.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from captagent_tls.capture import CaptureError
from captagent_tls.capture import live as live_module
from captagent_tls.capture.live import REOPEN_MAX_S, LiveCapture
from tests.support.live import Agent, require_live_capture

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "sip-over-tls.pcap"
EXAMPLE_KEY = REPO / "examples" / "server.key"


class FakePcapError(Exception):
    pass


class FakeHandle:
    """One libpcap handle: what the fake interface holds decides what it does."""

    def __init__(self, world: FakeWorld):
        self.world = world
        self.closed = False
        self.fd = world.next_fd
        world.next_fd += 1
        self.received = 0

    def set_snaplen(self, _: int) -> None: ...
    def set_promisc(self, _: int) -> None: ...
    def set_buffer_size(self, _: int) -> None: ...
    def set_timeout(self, _: int) -> None: ...

    def activate(self) -> int:
        self.world.activations += 1
        return 0 if self.world.state == "up" else -9  # PCAP_ERROR_IFACE_NOT_UP

    def setfilter(self, bpf: str) -> None:
        self.world.filters.append(bpf)

    def setnonblock(self, _: int) -> None: ...

    def datalink(self) -> int:
        return 1

    def getfd(self) -> int:
        return self.fd

    def next_batch(self, _: int) -> tuple[bytes, bytes]:
        if self.world.read_error:
            raise FakePcapError(self.world.read_error)
        if self.world.state != "up":
            raise FakePcapError("The interface went down")
        self.received += 1
        return b"", b""

    def stats(self) -> tuple[int, int, int]:
        return (self.received + 10, 1, 0)

    def close(self) -> None:
        self.closed = True


class FakeWorld:
    PcapError = FakePcapError

    def __init__(self) -> None:
        self.state = "up"
        self.read_error = ""
        self.handles: list[FakeHandle] = []
        self.filters: list[str] = []
        self.activations = 0
        self.next_fd = 10

    def create(self, _: str) -> FakeHandle:
        handle = FakeHandle(self)
        self.handles.append(handle)
        return handle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> FakeWorld:
    fake = FakeWorld()
    monkeypatch.setitem(sys.modules, "pcapy", fake)
    monkeypatch.setattr(live_module, "capture_devices", lambda: ["any", "veth0"])
    return fake


def open_capture(world: FakeWorld, clock: Clock, opened: list[int]) -> LiveCapture:
    return LiveCapture("veth0", "tcp port 5061", on_open=opened.append, clock=clock)


def test_a_lost_interface_is_reopened_with_the_same_settings_and_counted(world, caplog):
    clock, opened = Clock(), []
    capture = open_capture(world, clock, opened)
    assert capture.capturing and opened == [10]
    assert list(capture.read()) == []
    world.state = "down"
    assert list(capture.read()) == []  # the error is taken: no exception, no frames
    assert not capture.capturing and capture.fileno() is None
    assert world.handles[0].closed
    assert "capture on veth0 lost (The interface went down)" in caplog.text
    # down: attempts fail, further and further apart, never more than REOPEN_MAX_S
    attempts = []
    for _ in range(60):
        clock.now += 0.1
        before = world.activations
        assert not capture.maintain()
        if world.activations > before:
            attempts.append(clock.now)
    gaps = [round(b - a, 1) for a, b in zip(attempts, attempts[1:], strict=False)]
    assert gaps == sorted(gaps) and gaps[-1] <= REOPEN_MAX_S and len(attempts) >= 4
    world.state = "up"
    clock.now += REOPEN_MAX_S
    assert capture.maintain()
    assert capture.capturing and opened == [10, world.handles[-1].fd]
    assert world.filters == ["tcp port 5061"] * 2  # the filter goes with every handle
    stats = capture.stats()
    assert stats.reopens == 1
    assert stats.blind_seconds == pytest.approx(6.0 + REOPEN_MAX_S, abs=0.01)
    # the kernel's figures of the lost handle are kept, and the new handle's added
    assert stats.received == 11 + 10 and stats.dropped == 2
    assert "capturing on veth0 again after 8.0 s without capture" in caplog.text


def test_an_interface_that_is_down_at_start_is_waited_for(world, caplog):
    world.state = "down"
    clock, opened = Clock(), []
    capture = open_capture(world, clock, opened)
    assert not capture.capturing and opened == []
    assert "veth0 is not capturing yet (the interface is not up)" in caplog.text
    world.state = "up"
    clock.now += 1
    assert capture.maintain() and opened == [world.handles[-1].fd]


def test_a_read_error_that_is_not_the_interface_is_reported_not_retried(world):
    clock = Clock()
    capture = open_capture(world, clock, [])
    world.read_error = "recvfrom: Bad address"
    with pytest.raises(CaptureError, match="capture on veth0 failed: recvfrom: Bad address"):
        list(capture.read())
    clock.now += 10
    assert not capture.maintain() and not capture.capturing


def test_a_fanout_group_refused_on_reopening_is_tried_again(world):
    clock, opened = Clock(), []
    refuse = [True]

    def join(fd: int) -> None:
        if len(opened) == 1 and refuse[0]:
            refuse[0] = False
            from captagent_tls.workers.fanout import FanoutError

            raise FanoutError("cannot share the capture between workers")
        opened.append(fd)

    capture = LiveCapture("veth0", on_open=join, clock=clock)
    world.state = "down"
    list(capture.read())
    world.state = "up"
    clock.now += 1
    assert not capture.maintain()  # the group refused the new handle: closed, later again
    assert world.handles[-1].closed
    clock.now += REOPEN_MAX_S
    assert capture.maintain() and len(opened) == 2


def test_the_counters_name_reopens_and_blind_time(world):
    from captagent_tls.counters import Counters

    clock = Clock()
    capture = open_capture(world, clock, [])
    world.state = "down"
    list(capture.read())
    clock.now += 3
    counters = Counters()
    capture.stats().add_counters(counters)
    assert counters.get("capture_reopens") == 0
    assert counters.get("capture_blind_seconds") == pytest.approx(3.0)


# -- live: a veth pair flapped under the agent -------------------------------------------------


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


def _make_veth(name: str, peer: str) -> None:
    _ip("link", "add", name, "type", "veth", "peer", "name", peer)
    _ip("link", "set", name, "up")
    _ip("link", "set", peer, "up")


def _replay(interface: str) -> None:
    subprocess.run(
        ["tcpreplay", "-q", "-i", interface, str(EXAMPLE)], check=True, capture_output=True
    )


def _example_messages() -> int:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "captagent_tls",
            "-r",
            str(EXAMPLE),
            "-k",
            str(EXAMPLE_KEY),
            "-q",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return len(out.splitlines())


@pytest.fixture
def veth() -> Any:
    require_live_capture()
    if shutil.which("ip") is None or shutil.which("tcpreplay") is None:
        pytest.skip("needs ip (iproute2) and tcpreplay")
    name, peer = "catls0", "catls1"
    _ip("link", "del", name, check=False)
    try:
        _make_veth(name, peer)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a veth pair: {exc.stderr}")
    yield name, peer
    _ip("link", "del", name, check=False)


def _wait_for(agent: Agent, text: str, count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while agent.stderr.count(text) < count:
        assert time.monotonic() < deadline, f"no {count}x {text!r} in:\n{agent.stderr}"
        time.sleep(0.1)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_agent_survives_a_link_flap_and_a_recreated_interface(veth, workers):
    name, peer = veth
    per_replay = _example_messages()
    with Agent(
        "-f",
        "tcp port 5061",
        "-k",
        str(EXAMPLE_KEY),
        "--json",
        "--workers",
        str(workers),
        interface=name,
    ) as agent:
        _replay(peer)
        time.sleep(0.5)
        _ip("link", "set", name, "down")
        _wait_for(agent, "lost (The interface went down)", workers)
        _ip("link", "set", name, "up")
        _wait_for(agent, "again after", workers)
        _replay(peer)
        time.sleep(0.5)
        _ip("link", "del", name)  # a NIC reset, a re-created VLAN, a container's veth
        _wait_for(agent, "lost (The interface went down)", 2 * workers)
        _make_veth(name, peer)
        _wait_for(agent, "again after", 2 * workers)
        _replay(peer)
        assert agent.stop(settle=1.0) == 0
    assert len(agent.json()) == 3 * per_replay
    assert "Traceback" not in agent.stderr
    assert "re-opened 2 times" in agent.stderr
