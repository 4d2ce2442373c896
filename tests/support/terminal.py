"""Run the product with stderr (and, if asked, stdout) on a pseudo-terminal, as a person at a
terminal would: what it draws there (progress bar, status line, colour) is returned as text."""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .cli import _env

ANSI = "\x1b["


@dataclass
class TerminalRun:
    returncode: int
    stdout: str  # the pipe's text, or "" when stdout was the terminal too
    terminal: str  # everything written to the terminal (stderr, and stdout when asked)


def _read_available(fd: int, chunks: list[bytes], wait: float) -> bool:
    """Read what the terminal holds; False once the other side has gone (EIO)."""
    ready, _, _ = select.select([fd], [], [], wait)
    if not ready:
        return True
    try:
        data = os.read(fd, 65536)
    except OSError as exc:
        if exc.errno == errno.EIO:
            return False
        raise
    if not data:
        return False
    chunks.append(data)
    return True


def run_on_terminal(
    args: Sequence[str | os.PathLike[str]],
    *,
    stdout_on_terminal: bool = False,
    env: Mapping[str, str] | None = None,
    stdin: int | None = None,
    columns: int = 160,
    timeout: float = 120,
    while_running: Callable[[subprocess.Popen[bytes], list[bytes]], None] | None = None,
) -> TerminalRun:
    """``python -m captagent_tls ARGS`` with stderr on a pty of ``columns`` columns.

    ``while_running(proc, chunks)`` is called once the process started (it may send
    signals); ``chunks`` fills with what the terminal received so far.
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    full_env = _env()
    full_env.pop("NO_COLOR", None)
    full_env.update(env or {})
    argv = [sys.executable, "-m", "captagent_tls", *map(os.fspath, args)]
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            argv,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=slave if stdout_on_terminal else out,
            stderr=slave,
            env=full_env,
        )
        os.close(slave)
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        try:
            if while_running is not None:
                import threading

                helper = threading.Thread(target=while_running, args=(proc, chunks))
                helper.start()
            while time.monotonic() < deadline and _read_available(master, chunks, 0.1):
                pass
            proc.wait(max(1.0, deadline - time.monotonic()))
            if while_running is not None:
                helper.join()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)
        out.seek(0)
        stdout = out.read().decode("utf-8", "replace")
    return TerminalRun(proc.returncode, stdout, b"".join(chunks).decode("utf-8", "replace"))
