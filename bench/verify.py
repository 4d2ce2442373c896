"""Our outputs against the ground truth: the JSON lines of a file run (run.py), and the HEP
datagrams of a live run (live.py), message by message."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

from bench import revision, stats
from bench.captures import call_id, digest
from bench.collectors import hep_chunks
from bench.processes import measure


def verify_ours(pcap: Path, gt: dict[str, Any], out: Path, keep: bool) -> dict[str, Any]:
    """One untimed run with --json into a file; every message checked against the truth."""
    jl = out / f"{pcap.stem}.ours.jsonl"
    run = measure(
        revision.reading(pcap, "--json"),
        stdout=jl,
        env=revision.AGENT_ENV,
    )
    stats.check_ok(run, "verification run")
    want = collections.Counter(digest(m["dir"], m["text"]) for m in gt["messages"])
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
            got[digest(obj.get("direction", ""), obj.get("payload", ""))] += 1
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
    if stats.sip_messages(run.stderr) != len(gt["messages"]):
        problems.append(f"stats say {stats.sip_messages(run.stderr)} SIP messages")
    if problems:
        raise stats.WrongOutput(f"{pcap.name}: " + "; ".join(problems))
    return {"sip_messages": n_sip, "payloads_match": True, "call_ids_match": True}


Key = tuple[int, str, bytes]  # (client port, direction, digest of the payload)


def truth_keys(gt: dict[str, Any]) -> collections.Counter[Key]:
    ports = [c["client_port"] for c in gt["connections"]]
    return collections.Counter(
        (ports[m["conn"]], m["dir"], digest(m["dir"], m["text"])) for m in gt["messages"]
    )


def received_keys(
    datagrams: list[bytes], server_ports: set[int]
) -> tuple[collections.Counter[Key], int]:
    """(client port, direction, payload digest) of every HEP datagram; and how many were
    not well-formed HEPv3 SIP packets."""
    got: collections.Counter[Key] = collections.Counter()
    bad = 0
    for d in datagrams:
        c = hep_chunks(d)
        if 0x000F not in c or 0x0007 not in c or 0x0008 not in c or c.get(0x000B) != b"\x01":
            bad += 1
            continue
        sport = int.from_bytes(c[0x0007], "big")
        dport = int.from_bytes(c[0x0008], "big")
        direction, client = ("c2s", sport) if dport in server_ports else ("s2c", dport)
        text = c[0x000F].decode("utf-8", "replace")
        got[(client, direction, digest(direction, text))] += 1
    return got, bad
