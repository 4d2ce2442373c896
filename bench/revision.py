"""Which code is measured: the agent's command, ``src/`` of a git revision (``--rev``) to run
it from, and how the results name that code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.paths import KEY, ROOT

#: environment of our agent's runs; with --rev, PYTHONPATH points at an exported tree.
#: Read it as ``revision.AGENT_ENV`` when the agent starts: :func:`export_rev` sets it.
AGENT_ENV: dict[str, str] | None = None


def export_src(rev: str, dest: Path) -> Path:
    """``src/`` of git revision ``rev``, exported afresh under ``dest``; returns
    ``dest/src``."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def export_rev(rev: str, dest: Path) -> str:
    """Export ``src/`` of git revision ``rev`` under ``dest`` and run the agent from
    there (PYTHONPATH comes before the editable install's path entry)."""
    global AGENT_ENV
    full = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    src = export_src(full, dest)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)
    where = subprocess.run(
        [sys.executable, "-c", "import captagent_tls; print(captagent_tls.__file__)"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not where.startswith(str(dest)):
        raise SystemExit(f"--rev: captagent_tls still imports from {where}")
    AGENT_ENV = env
    return full


def use_rev(rev: str | None, out: Path) -> str | None:
    """``--rev REV``: export it to OUT/rev-src and measure it (its full commit); None
    without ``--rev`` (the work tree is measured)."""
    return export_rev(rev, out / "rev-src") if rev else None


def agent_cmd() -> list[str]:
    """The console script next to this interpreter (not a pyenv/asdf shim, whose
    start-up would be timed too); ``python -m captagent_tls`` as a fallback."""
    exe = Path(sys.executable).parent / "captagent-tls"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "captagent_tls"]


def reading(capture: Path, *options: str) -> list[str]:
    """Our agent's command line reading ``capture`` with the fixtures' server key."""
    return [*agent_cmd(), "-r", str(capture), "-k", str(KEY), *options]


def source_info() -> dict[str, Any]:
    """Which code was measured: the commit and whether src/ had local changes."""

    def git(*a: str) -> str:
        r = subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    dirty = [ln[3:] for ln in git("status", "--porcelain", "--", "src").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD") or None, "src_changes": dirty}


def source(rev: str | None) -> dict[str, Any]:
    """The results' ``source``: the revision given to ``--rev``, else :func:`source_info`."""
    return {"rev": rev[:12]} if rev else source_info()


def describe(source: dict[str, Any]) -> str:
    """The code of a :func:`source`, in words, for the results' header line."""
    if "rev" in source:
        return f"src/ of git revision {source['rev']}"
    code = f"commit {source['commit']}"
    if source["src_changes"]:
        code += f" + uncommitted changes in {len(source['src_changes'])} src files"
    return code
