"""Findings: an input that made a target fail, kept once per distinct failure.

A failure's *signature* is what tells two findings apart: the exception type and the
innermost line of the product (``src/captagent_tls``) where it was raised, or, for an
oracle failure, the rule it broke and the fixture.  Each distinct signature gets a folder
``FINDINGS/TARGET/SIGNATURE/`` holding the smallest input seen so far (``input.bin``), the
traceback (``traceback.txt``), whatever the target adds (for the pipeline: the mutated
capture and a command line that replays it) and a count of the inputs that hit it.
"""

from __future__ import annotations

import hashlib
import json
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from fuzz.oracle import OracleFailure

SRC_MARK = "/src/captagent_tls/"


@dataclass
class Finding:
    target: str
    signature: str  # short, stable, file-name safe
    summary: str  # the traceback's last line
    location: str  # file:line in the product where it happened (or the oracle rule)
    traceback: str
    data: bytes
    extra: dict[str, bytes] = field(default_factory=dict)

    @property
    def folder_name(self) -> str:
        return self.signature


def product_location(exc: BaseException) -> str:
    """The innermost frame in the product (else the innermost frame) as path:line."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if SRC_MARK in f.filename.replace("\\", "/")]
    frame = (ours or frames or [None])[-1]
    if frame is None:
        return "?"
    name = frame.filename.replace("\\", "/")
    if SRC_MARK in name:
        name = "src/captagent_tls/" + name.split(SRC_MARK, 1)[1]
    else:
        name = Path(name).name
    return f"{name}:{frame.lineno}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:80]


def from_exception(
    target: str,
    exc: BaseException,
    data: bytes,
    context: str = "",
    extra: dict[str, bytes] | None = None,
) -> Finding:
    """``context`` separates oracle findings that share a rule (e.g. the fixture's name)."""
    text = "".join(traceback.format_exception(exc))
    summary = (traceback.format_exception_only(exc)[-1].strip())[:300]
    if isinstance(exc, OracleFailure):
        location = f"oracle:{exc.check}"
        key = f"{exc.check}-{context}" if context else exc.check
    else:
        location = product_location(exc)
        key = f"{type(exc).__name__}-{location}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return Finding(
        target, f"{_slug(key)}-{digest}", summary, location, text, data, dict(extra or {})
    )


def slow(
    target: str, seconds: float, data: bytes, limit: float, extra: dict[str, bytes] | None = None
) -> Finding:
    text = f"one input took {seconds:.1f} s (limit {limit:g} s)\n"
    return Finding(target, "slow-input", text.strip(), "slow", text, data, dict(extra or {}))


def save(finding: Finding, root: Path) -> tuple[Path, bool]:
    """Store a finding; returns (its folder, whether the signature is new).  A smaller input
    with the same signature replaces the one kept; ``count`` is how many times an input
    was kept (the first, then each smaller one)."""
    folder = root / finding.target / finding.folder_name
    meta_path = folder / "finding.json"
    new = not meta_path.exists()
    meta = {"count": 0}
    if not new:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {"count": 0}
    meta["count"] = int(meta.get("count", 0)) + 1
    keep = new or len(finding.data) < int(meta.get("input_size", 1 << 62))
    folder.mkdir(parents=True, exist_ok=True)
    if keep:
        for old in folder.iterdir():
            if old.name != "finding.json":
                old.unlink()
        (folder / "input.bin").write_bytes(finding.data)
        (folder / "traceback.txt").write_text(finding.traceback)
        for name, content in finding.extra.items():
            (folder / name).write_bytes(content)
        meta.update(
            target=finding.target,
            signature=finding.signature,
            summary=finding.summary,
            location=finding.location,
            input_size=len(finding.data),
        )
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return folder, new


def record_hit(hits: Path, target: str, finding: Finding, new: bool, folder: Path) -> None:
    """One line in the run's list of hits (JSON lines), which the runner sums up at the end."""
    line = {
        "target": target,
        "signature": finding.signature,
        "summary": finding.summary,
        "location": finding.location,
        "new": new,
        "folder": str(folder),
    }
    with hits.open("a") as out:
        out.write(json.dumps(line) + "\n")


def load_all(root: Path) -> list[dict[str, object]]:
    """Every finding's metadata under a findings folder."""
    out = []
    for meta_path in sorted(root.glob("*/*/finding.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        meta["folder"] = str(meta_path.parent)
        out.append(meta)
    return out
