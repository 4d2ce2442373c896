"""A worker started again by the parent (``python -m captagent_tls.workers``), as a fresh
interpreter: it reads its spec and its channel's descriptors (pickled) on standard input,
loads the keys from the command line's files, and runs."""

from __future__ import annotations

import pickle
import sys

from captagent_tls.assembly.keys import load_rsa_key_files
from captagent_tls.assembly.process import configure_logging
from captagent_tls.errors import UserFacingError, one_line
from captagent_tls.tls.keys import KeyStore
from captagent_tls.workers.channel import Channel
from captagent_tls.workers.worker import run_worker


def main() -> int:
    spec, (read_fd, write_fd) = pickle.load(sys.stdin.buffer)
    settings = spec.settings
    configure_logging(settings.verbose)
    channel = Channel(read_fd, write_fd, blocking_writes=True)
    keys = KeyStore()
    try:
        load_rsa_key_files(settings, keys)  # (the parent warned about the files already)
    except UserFacingError as exc:
        channel.send(("fatal", one_line(str(exc))))
        return 1
    return run_worker(spec, keys, channel)


if __name__ == "__main__":
    sys.exit(main())
