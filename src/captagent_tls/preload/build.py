"""Compile sslkeylog.c into sslkeylog.so with the system's C compiler.

Used by the package build (setup.py loads this file on its own, before the package or its
dependencies exist: standard library only) and by ``captagent-tls-keylog --build``.
The result is a plain shared library to preload, not a Python extension; it is compiled
against the OpenSSL headers but not linked to libssl: it uses whichever libssl the process it
is preloaded into loads.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().with_name("sslkeylog.c")
LIBRARY_NAME = "sslkeylog.so"

CFLAGS = ["-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-Wall", "-Wextra"]
# -z defs: a symbol left undefined is an error here, not a surprise in a SIP server.
LDFLAGS = ["-Wl,-z,defs", "-Wl,-z,relro", "-Wl,-z,now", "-ldl", "-lpthread"]

HEADERS_HINT = (
    "the OpenSSL headers are missing (Debian/Ubuntu: apt-get install libssl-dev; "
    "Fedora/RHEL: dnf install openssl-devel)"
)
COMPILER_HINT = "no C compiler found (Debian/Ubuntu: apt-get install gcc; or set CC)"


class BuildError(Exception):
    """The library cannot be built here; the message says why, for a person."""


def compiler() -> list[str]:
    """The C compiler to use: $CC (may hold arguments), else cc."""
    command = shlex.split(os.environ.get("CC", "").strip() or "cc")
    if not command or shutil.which(command[0]) is None:
        raise BuildError(COMPILER_HINT)
    return command


def compile_library(output: Path, source: Path = SOURCE, timeout: float = 120) -> Path:
    """Compile ``source`` into ``output`` and return it.

    The library is written beside ``output`` and renamed over it, so a process that has the
    previous one mapped keeps running on the old file.  Raises BuildError with the reason.
    """
    if not source.is_file():
        raise BuildError(f"the source {source} is missing")
    cc = compiler()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".sslkeylog-", suffix=".so", dir=output.parent)
    os.close(fd)
    try:
        try:
            result = subprocess.run(
                [*cc, *CFLAGS, "-o", temporary, str(source), *LDFLAGS],
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except OSError as exc:
            raise BuildError(f"cannot run {cc[0]}: {exc.strerror or exc}") from exc
        except subprocess.TimeoutExpired as exc:
            raise BuildError(f"{cc[0]} did not finish in {timeout:.0f} s") from exc
        if result.returncode != 0:
            raise BuildError(_explain(cc[0], result.stderr))
        os.chmod(temporary, 0o755)
        os.replace(temporary, output)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return output


def _explain(cc: str, stderr: str) -> str:
    if "openssl/" in stderr and ("No such file" in stderr or "not found" in stderr):
        return HEADERS_HINT
    if "OpenSSL 1.1.1 or later" in stderr:
        return "the OpenSSL headers are older than 1.1.1, which has no key-log callback"
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    detail = lines[-1] if lines else "no message"
    return f"{cc} failed: {detail}"
