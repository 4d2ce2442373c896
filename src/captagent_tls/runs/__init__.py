"""Running a job: reading a capture file or capturing live, in one process or as the parent
of worker processes.

The command line turns argv (and configuration files) into a :class:`RunDescription` and
hands it to :func:`run`; everything a run is made of comes from :mod:`captagent_tls.assembly`.
"""

from __future__ import annotations

from captagent_tls.config.settings import Settings
from captagent_tls.runs.description import RunDescription


def describe(settings: Settings) -> RunDescription:
    """The run the settings ask for (exactly one of -r and -i is set: the command line
    checked it)."""
    from captagent_tls.workers import workers_for

    live = bool(settings.interface)
    source = settings.interface if live else settings.read
    assert source
    return RunDescription(live, source, workers_for(settings, source, live), settings)


def run(description: RunDescription) -> int:
    """Run it; the exit status."""
    if description.live:
        from captagent_tls.runs.live import run_live

        return run_live(description)
    from captagent_tls.runs.offline import run_offline

    return run_offline(description)
