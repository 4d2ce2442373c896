"""Messages between the parent and a worker: pickled objects, each preceded by its length,
over a pair of pipes.

A worker writes to the parent blocking: when the parent falls behind, the worker waits (that
is the bound on what the parent holds).  The parent never blocks: it reads whatever has come,
and what it sends to a worker (key-log lines) waits in a buffer until the pipe takes it, so a
worker busy writing can never stall the parent, nor the parent the worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import struct
from typing import Any

_LENGTH = struct.Struct("!I")
READ_SIZE = 4 << 20
# A worker's records are ~45 MB for the bulk benchmark: through the default 64 KiB pipe that
# is ~700 hand-overs between processes, each waiting for the other to be scheduled, which on
# a loaded machine cost more than a second.  Linux lets a pipe grow to pipe-max-size (1 MiB
# by default; more for root).
PIPE_SIZE = 4 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class ChannelClosed(Exception):
    """The other side closed its end (it exited)."""


class Channel:
    """One end: ``read_fd`` carries messages in, ``write_fd`` carries them out."""

    def __init__(self, read_fd: int, write_fd: int, blocking_writes: bool):
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.blocking_writes = blocking_writes
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, blocking_writes)
        self._in = bytearray()
        self._out = bytearray()
        self.closed = False

    def fileno(self) -> int:
        """For ``select``: readable when messages have come."""
        return self.read_fd

    # -- out -------------------------------------------------------------------------------

    def send(self, message: Any) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._out += _LENGTH.pack(len(data))
        self._out += data
        self.flush()

    def flush(self) -> None:
        """Write what waits: all of it when writes block; what the pipe takes otherwise."""
        out = self._out
        while out:
            try:
                written = os.write(self.write_fd, out)
            except BlockingIOError:
                return
            except (BrokenPipeError, OSError) as exc:
                out.clear()
                raise ChannelClosed(str(exc)) from None
            del out[:written]

    @property
    def waiting(self) -> bool:
        """Bytes wait to be written (the parent selects for writing then)."""
        return bool(self._out)

    # -- in --------------------------------------------------------------------------------

    def receive(self) -> list[Any]:
        """The messages that have come in full (none when nothing is ready).
        ``ChannelClosed`` once the other side closed and every message was taken."""
        try:
            data = os.read(self.read_fd, READ_SIZE)
        except BlockingIOError:
            return []
        if not data:
            raise ChannelClosed("closed")
        buffer = self._in
        buffer += data
        messages = []
        position = 0
        while len(buffer) - position >= 4:
            (length,) = _LENGTH.unpack_from(buffer, position)
            end = position + 4 + length
            if len(buffer) < end:
                break
            messages.append(pickle.loads(buffer[position + 4 : end]))
            position = end
        if position:
            del buffer[:position]
        return messages

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _grow(fd: int) -> None:
    for size in (PIPE_SIZE, 1 << 20):
        try:
            fcntl.fcntl(fd, F_SETPIPE_SZ, size)
            return
        except OSError:  # over pipe-max-size (not root), or not Linux
            continue


def channel_pair() -> tuple[Channel, tuple[int, int]]:
    """The parent's end, and the two descriptors (read, write) the worker's end is made of."""
    up_read, up_write = os.pipe()  # worker -> parent
    _grow(up_write)
    down_read, down_write = os.pipe()  # parent -> worker
    return Channel(up_read, down_write, blocking_writes=False), (down_read, up_write)
