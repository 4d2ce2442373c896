"""What one run is: the job the command line describes, for :func:`captagent_tls.runs.run`."""

from __future__ import annotations

from dataclasses import dataclass

from captagent_tls.config.settings import Settings


@dataclass(frozen=True)
class RunDescription:
    """What to run: a file (``-r``) or an interface (``-i``), with how many processes, and the
    settings of everything else."""

    live: bool
    source: str  # the capture file ("-": standard input) or the interface
    workers: int  # 1: one process; more: worker processes and their parent
    settings: Settings
