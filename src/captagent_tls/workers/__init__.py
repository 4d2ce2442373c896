"""Worker processes (``--workers N``): every core takes a share of the flows.

One Python process decrypts on one core.  With workers, the flows are sharded so that each
worker sees every packet of its flows and nothing else, and runs the same pipeline as a
single process would:

* **Live** (``-i``): each worker opens its own libpcap handle with the same filter and joins
  one ``PACKET_FANOUT`` group in hash mode with the defragment flag (:mod:`.fanout`): the
  kernel hands both directions of a TCP flow, and every fragment of a datagram, to the same
  worker, as Suricata's ``cluster_flow`` and Zeek's AF_PACKET plugin do.
* **Files** (``-r``): every worker reads the whole file and keeps its share (:mod:`.shard`).
  Reading the bulk benchmark's 73,000 frames takes 0.06 s and dealing them 0.07 s per
  worker, against ~1 s of decryption: cheaper than one reader pickling every frame to the
  workers through pipes (33 MB) on a machine whose cores the workers need.

The parent process does the I/O that must be one: it writes the console, JSON lines, ``-w``,
the call-flow report and the decryptable capture, merged by capture time (:mod:`.outputs`);
it listens for key-log lines and forwards them to every worker; it sums the counters
(:mod:`.totals`), serves ``/metrics``, prints the stats and watches the workers
(:mod:`.parent`).  Each worker sends HEP itself (a flow lives in one worker, so each flow's
messages keep their order, and each worker's queue is bounded as before).

Workers are forked once the keys are loaded and before anything starts a thread (HEP
senders, the metrics server); a live worker that dies is reported and started again as a
fresh interpreter (:mod:`captagent_tls.workers.__main__`), which loads the keys from the
command line's files and is sent the key-log lines the parent received.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from captagent_tls.config.settings import Settings

log = logging.getLogger("captagent_tls")

# ``--workers auto`` reads a file smaller than this with one process: starting a second one
# and merging costs more than it saves (measured: bench/README.md, "Workers")
AUTO_MIN_FILE_BYTES = 4 << 20


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def workers_for(args: Settings, source: str, live: bool) -> int:
    """How many workers this run gets: ``--workers N``, or for ``auto`` the cores this
    process may use (one for a small file, or for standard input)."""
    wanted = getattr(args, "workers", 1)
    if not live and source == "-":
        if wanted != "auto" and wanted > 1:
            log.warning(
                "--workers %d: standard input can be read only once, so one process reads it",
                wanted,
            )
        return 1
    if wanted != "auto":
        return int(wanted)
    cores = usable_cores()
    if not live and cores > 1:
        try:
            if os.path.getsize(source) < AUTO_MIN_FILE_BYTES:
                return 1
        except OSError:
            return 1  # the run says what is wrong with the file
    return cores
