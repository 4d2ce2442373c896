"""The error a person can act on: its message is the one line the command prints (after
"captagent-tls: error:"), never a traceback.  Every module's user-facing errors derive from it,
so the command catches them all without importing every module that may raise one."""

from __future__ import annotations


class UserFacingError(Exception):
    """A file, key, interface, filter, collector or option value that cannot be used."""


class UserError(UserFacingError):
    """What the user asked for cannot be done (a file that cannot be written, a worker that
    failed, an option that needs another one)."""


def one_line(text: str) -> str:
    """A message as one line: control characters (a newline in a file name...) and bytes
    that are not UTF-8 (surrogates, from argv) are shown escaped."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
