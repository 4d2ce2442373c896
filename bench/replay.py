"""Replaying a capture onto ``lo`` with tcpreplay: what a live benchmark needs, the rates,
tcpreplay's command line and what it reports it sent."""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path

FULL_RATES = "5000,10000,15000,20000,25000,30000,40000,50000,65000,80000,100000,150000,top"
QUICK_RATES = "2000,10000,top"


def check_prerequisites(*tools: str) -> None:
    """Root, tcpreplay and ``tools`` (e.g. py-spy), or exit saying which is missing."""
    if os.geteuid() != 0:
        raise SystemExit("live capture and tcpreplay need root")
    for tool in ("tcpreplay", *tools):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found")


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


def replay_argv(pcap: Path, rate: str) -> list[str]:
    # --timer=nano: nanosleep between packets.  The default (gtod) busy-waits and takes a
    # whole core at low rates (6-7 CPU-s for a 7 s replay), on a 2-core machine shared with
    # the agent; nano keeps the rate as exactly and uses ~1 CPU-s for the same replay.
    speed = ["--topspeed"] if rate == "top" else ["--timer=nano", f"--pps={int(rate)}"]
    return ["tcpreplay", "-q", "-i", "lo", *speed, str(pcap)]


_REPLAY = re.compile(r"Actual: (\d+) packets \((\d+) bytes\) sent in ([\d.]+) seconds")


def replayed(output: str) -> tuple[int, float] | None:
    """(packets sent, seconds) from tcpreplay's report; None without it."""
    m = _REPLAY.search(output)
    return (int(m.group(1)), float(m.group(3))) if m else None
