"""The media stage live: a real-peer capture replayed onto a veth pair at its own pace while
the agent captures with a filter that lets the media in; every RTCP report sent in a call
comes out, one process and two workers (root, ``ip``, ``tcpreplay``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.live import Agent, require_live_capture

MEDIA = Path(__file__).parent / "fixtures" / "media"


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


@pytest.fixture
def veth() -> Any:
    require_live_capture()
    if shutil.which("ip") is None or shutil.which("tcpreplay") is None:
        pytest.skip("needs ip (iproute2) and tcpreplay")
    name, peer = "catlsm0", "catlsm1"
    _ip("link", "del", name, check=False)
    try:
        _ip("link", "add", name, "type", "veth", "peer", "name", peer)
        _ip("link", "set", name, "up")
        _ip("link", "set", peer, "up")
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a veth pair: {exc.stderr}")
    yield name, peer
    _ip("link", "del", name, check=False)


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("name", ["sdes-aes256-80", "rekey-reinvite"])
def test_rtcp_of_a_replayed_call_comes_out_live(veth, name, workers):
    if not (MEDIA / f"{name}.pcap").exists():
        pytest.skip("no media fixtures")
    interface, peer = veth
    truth = json.loads((MEDIA / f"{name}.json").read_text())
    sent = sorted(
        (r["src"], r["dst"], r["call_id"]) for r in truth["rtcp"] if r["call_id"] is not None
    )
    with Agent(
        "-f",
        "tcp port 25061 or udp portrange 30000-30999",
        "-k",
        str(MEDIA / truth["tls"]["key"]),
        "--json",
        "--workers",
        workers,
        interface=interface,
    ) as agent:
        subprocess.run(
            ["tcpreplay", "-q", "-i", peer, str(MEDIA / f"{name}.pcap")],
            check=True,
            capture_output=True,
        )
        assert agent.stop(settle=1.5) == 0
    rtcp = [o for o in agent.json() if o["kind"] == "rtcp"]
    got = sorted(
        (f"{o['src_ip']}:{o['src_port']}", f"{o['dst_ip']}:{o['dst_port']}", o["call_id"])
        for o in rtcp
    )
    assert got == sent, agent.stderr
