"""tshark doing the same task as our ``--json`` run: decrypt every record with the server key
and dissect every SIP message; its time, and whether it really got every message."""

from __future__ import annotations

import collections
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.captures import call_id
from bench.paths import KEY
from bench.processes import measure, summarize


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
