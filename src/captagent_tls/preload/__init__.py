"""The key-log preload library: ``sslkeylog.so``, built from ``sslkeylog.c`` beside this file.

Preloaded into a TLS server that links OpenSSL (Kamailio 5.x, OpenSIPS, Asterisk, FreeSWITCH,
SIPp), it hands each NSS key-log line the server's OpenSSL produces to a file
(``SSLKEYLOGFILE``) and/or, one UDP datagram per line, to the agent's ``--keylog-listen
udp://`` address (``SSLKEYLOG_UDP``).  ``captagent-tls-keylog`` (``command.py``) prints its path
and a systemd drop-in; ``build.py`` compiles it (at install time, or with ``--build``).
"""

from __future__ import annotations

from pathlib import Path

from captagent_tls.preload.build import LIBRARY_NAME, SOURCE

PACKAGE_DIR = Path(__file__).resolve().parent


def library_path() -> Path:
    """Where the package keeps the library (built or not)."""
    return PACKAGE_DIR / LIBRARY_NAME


def built_library() -> Path | None:
    """The library, when it has been built."""
    path = library_path()
    return path if path.is_file() else None


__all__ = ["LIBRARY_NAME", "PACKAGE_DIR", "SOURCE", "built_library", "library_path"]
