"""py-spy samples of the agent (``live.py --profile``): the sampler's command line, and the
top functions of its raw output ("frame;frame;... count" per line) by self and inclusive
time."""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any


def record_argv(pid: int, path: Path) -> list[str]:
    """``py-spy record`` of process ``pid`` at 200 samples/s, collapsed stacks to ``path``."""
    return [
        "py-spy",
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--rate",
        "200",
        "-o",
        str(path),
    ]


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    own: collections.Counter[str] = collections.Counter()
    own_fn: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        own[_short(frames[-1], with_line=True)] += count
        own_fn[_short(frames[-1], with_line=False)] += count
        for name in {_short(f, with_line=False) for f in frames}:
            incl[name] += count
    pct = (lambda c: round(100.0 * c / total, 1)) if total else (lambda c: 0.0)
    return {
        "samples": total,
        "self": [(name, pct(c)) for name, c in own.most_common(top)],
        "self_by_function": [(name, pct(c)) for name, c in own_fn.most_common(top)],
        "inclusive": [(name, pct(c)) for name, c in incl.most_common(top)],
    }


def _short(frame: str, with_line: bool) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    file = m["file"]
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    where = f"{file}:{m['line']}" if with_line and m["line"] else file
    return f"{m['func']} ({where})"
