"""The benchmark captures and their ground truth: recorded on loopback by the tests' peers
(``tests/fixtures/peers.py``) or reused from bench/out, and what the truth says of a message."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from tests.fixtures import peers

FULL = {
    "bulk": {"connections": 20, "messages": 56_000, "cipher": "AES256-GCM-SHA384"},
    "handshakes": {"handshakes": 2000, "concurrency": 8, "cipher": "AES256-GCM-SHA384"},
}
QUICK = {
    "bulk": {"connections": 4, "messages": 2_000, "cipher": "AES256-GCM-SHA384"},
    "handshakes": {"handshakes": 100, "concurrency": 8, "cipher": "AES256-GCM-SHA384"},
}


def sizes_and_prefix(quick: bool) -> tuple[dict[str, dict[str, Any]], str]:
    """The capture sizes, and the prefix of their files (``quick-`` for ``--quick``, so a
    smoke run never replaces the full-size files)."""
    return (QUICK, "quick-") if quick else (FULL, "")


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
            return gt, {"reused": True, "seconds": None, "pcap_mb": mb(pcap)}
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
    print(f"[{name}] recorded {mb(pcap):.1f} MB in {secs:.1f} s", flush=True)
    return gt, {"reused": False, "seconds": round(secs, 1), "pcap_mb": mb(pcap)}


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


def mb(p: Path) -> float:
    return round(p.stat().st_size / 1e6, 1)


def pcap_packets(pcap: Path) -> int:
    """Packets in a classic pcap file (the bench captures are pcap, not pcapng)."""
    from captagent_tls.capture.files import CaptureReader

    with CaptureReader(str(pcap)) as reader:
        return sum(1 for _ in reader)


# --------------------------------------------------------------------------
# what the ground truth says of a message
# --------------------------------------------------------------------------

_CALL_ID = re.compile(r"^(?:Call-ID|i)[ \t]*:[ \t]*(.*?)[ \t]*$", re.M | re.I)


def call_id(text: str) -> str:
    m = _CALL_ID.search(text.split("\r\n\r\n", 1)[0].replace("\r\n", "\n"))
    return m.group(1) if m else ""


def digest(direction: str, text: str) -> bytes:
    """A message as (direction, payload), in 16 bytes: what the checks count."""
    return hashlib.blake2b(f"{direction}\0{text}".encode(), digest_size=16).digest()
