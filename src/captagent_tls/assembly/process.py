"""The process a run lives in: its logging, and the user it runs as."""

from __future__ import annotations

import logging
import os

from captagent_tls.errors import UserError

log = logging.getLogger("captagent_tls")


def configure_logging(verbose: int) -> None:
    """Warnings by default, -v information, -vv debugging; every line names the program."""
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="captagent-tls: %(message)s")


def import_what_packets_may_need() -> None:
    """Modules the packet path imports only when it meets what needs them (start-up stays
    short) are imported now, while their files can be read: the user we switch to may not
    read the interpreter's library (a Python under /root, say)."""
    import cryptography.hazmat.primitives.serialization  # noqa: F401 - certificates' keys

    import captagent_tls.websocket  # noqa: F401


def drop_privileges(user: str) -> None:
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise UserError(f"no such user {user!r} (--user)") from None
    try:
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    except PermissionError:
        raise UserError(f"cannot switch to user {user!r}: not running as root") from None
    log.info("running as %s", user)
