"""The error a person can act on: its message is the one line the command prints (after
"captagent-tls: error:"), never a traceback.  Every module's user-facing errors derive from it,
so the command catches them all without importing every module that may raise one."""

from __future__ import annotations


class UserFacingError(Exception):
    """A file, key, interface, filter, collector or option value that cannot be used."""
