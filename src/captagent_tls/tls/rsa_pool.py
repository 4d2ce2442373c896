"""RSA decryption of pre-master secrets off the packet path.

A full RSA handshake costs one private-key operation (about 0.3 ms for RSA-2048), more than
everything else the agent does for a connection.  After a SIP proxy restarts, thousands of
clients reconnect at once, so these run on a pool of threads (pyca/cryptography releases the
GIL while OpenSSL works) while the capture loop goes on; the connection's records wait for
the master secret in order, as they wait for late key-log lines.

The pool is the only part of the TLS stage that is not sans-IO: threads.  Jobs are pure
functions of immutable inputs (a key object, the encrypted bytes); their results come back to
the capture loop's thread through ``completed``, which only it reads.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait

from captagent_tls.tls.keys import RsaKey

# While decryptions are pending, the interpreter hands the GIL over this often.  A pool thread
# needs the GIL back after each decryption (to return its result and start the next one), and
# a busy capture loop keeps the GIL until the switch interval runs out: with the default 5 ms,
# or even 1 ms, the thread spends most of its time waiting for the GIL, not decrypting, and
# the pool is no faster than decrypting in the capture loop (measured: bench/README.md,
# "RSA off the packet path").  The interval goes back to what it was once nothing is pending.
BUSY_SWITCH_INTERVAL_S = 0.00002


# Reading a file, an RSA result is taken up this many frames after its ClientKeyExchange (see
# RsaPool).  The capture loop handles a frame in 10-20 us, so this is 3-5 ms of its work, ten
# or more RSA-2048 decryptions (0.2-0.3 ms each): the threads keep up unless they are the
# bottleneck anyway, and records wait no longer than that for their keys.
RSA_RELEASE_AFTER_FRAMES = 256


class RsaJob:
    """The pre-master secrets one ClientKeyExchange decrypts to, one per candidate key."""

    __slots__ = ("future", "owner", "done")

    def __init__(self, future: Future[list[bytes | None]], owner: object):
        self.future = future
        self.owner = owner  # who submitted it (a connection): the pool never looks at it
        self.done = False  # handed over to the capture loop: its connection may take it

    def result(self) -> list[bytes | None]:
        return self.future.result()


def _decrypt_all(keys: Sequence[RsaKey], encrypted: bytes) -> list[bytes | None]:
    return [key.decrypt_pre_master(encrypted) for key in keys]


def default_threads() -> int:
    """One thread per core this process may use, but the capture loop's."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - 1) if cores > 1 else 1


class RsaPool:
    """Threads that decrypt pre-master secrets; started on the first job.

    Live, a job is handed over as soon as it is done.  Reading a file, ``due_frame`` makes the
    hand-over a function of the capture alone: a job is handed over when the frame it names at
    submission comes (``release_due``; RSA_RELEASE_AFTER_FRAMES later), waiting for it then if
    it is not done yet, in the order submitted.  When records wait for their keys,
    and so the order in which the connections' messages come out, is then the same on every
    run, however the threads were scheduled; the frames in between (a few milliseconds of
    work) are what the threads overlap with.
    """

    def __init__(
        self,
        threads: int | None = None,
        due_frame: Callable[[], int] | None = None,
    ):
        self.threads = threads if threads is not None else default_threads()
        self.due_frame = due_frame  # files: the frame at which a job submitted now is due
        # (frame due, job), in the order submitted (files)
        self.scheduled: deque[tuple[int, RsaJob]] = deque()
        self._executor: ThreadPoolExecutor | None = None
        self._pending: set[RsaJob] = set()
        self._lock = threading.Lock()
        self._all_done = threading.Condition(self._lock)  # notified when _pending empties
        self._idle_interval: float | None = None  # the switch interval while nothing is pending
        # jobs done and not yet taken up by the capture loop (appended by the pool's threads)
        self.completed: deque[RsaJob] = deque()

    def submit(self, owner: object, keys: Sequence[RsaKey], encrypted: bytes) -> RsaJob:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="rsa")
        job = RsaJob(self._executor.submit(_decrypt_all, tuple(keys), encrypted), owner)
        with self._lock:
            if not self._pending and self._idle_interval is None:
                self._idle_interval = sys.getswitchinterval()
                sys.setswitchinterval(min(self._idle_interval, BUSY_SWITCH_INTERVAL_S))
            self._pending.add(job)
        if self.due_frame is None:
            job.future.add_done_callback(lambda _future: self._finished(job))
        else:
            self.scheduled.append((self.due_frame(), job))
        return job

    def release_due(self, frame: int) -> None:
        """Files: frame ``frame`` is coming; hand over the jobs due by then (see above)."""
        scheduled = self.scheduled
        while scheduled and scheduled[0][0] <= frame:
            self._hand_over(scheduled.popleft()[1])

    def _hand_over(self, job: RsaJob) -> None:
        if not job.future.done():  # (wait() costs tens of microseconds even when it is done)
            futures_wait([job.future])
        self._finished(job)

    def _finished(self, job: RsaJob) -> None:
        # the job is in ``completed`` before it leaves ``_pending``, under one lock: the
        # capture loop, which decides from the two whether anything is still to come, never
        # sees a job in neither
        with self._lock:
            job.done = True
            self.completed.append(job)
            self._pending.discard(job)
            if not self._pending:
                if self._idle_interval is not None:
                    sys.setswitchinterval(self._idle_interval)
                    self._idle_interval = None
                self._all_done.notify_all()

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    def wait(self) -> None:
        """Until every job submitted so far is done and in ``completed`` (the end of a
        capture file).  Waiting for the futures alone is not enough: a future is done before
        its callback has handed the job over."""
        while self.scheduled:  # files: every job now, in the order submitted
            self._hand_over(self.scheduled.popleft()[1])
        with self._lock:
            while self._pending:
                self._all_done.wait()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
