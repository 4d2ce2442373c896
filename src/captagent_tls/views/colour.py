"""Colour on the terminal: when to use it (``--color auto|always|never``, ``NO_COLOR``) and
the ANSI SGR codes of each kind of text.

``auto`` colours only a terminal, and never when the ``NO_COLOR`` environment variable is set
to anything but the empty string (https://no-color.org), nor for ``TERM=dumb``.  ``always``
and ``never`` are the user's explicit word and win over both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import IO, Any

CHOICES = ("auto", "always", "never")

RESET = "\x1b[0m"
DIM = "\x1b[2m"
CLIENT_TO_SERVER = "\x1b[36m"  # cyan
SERVER_TO_CLIENT = "\x1b[35m"  # magenta
REQUEST = "\x1b[1;34m"  # bold blue
PROVISIONAL = "\x1b[33m"  # 1xx: yellow
SUCCESS = "\x1b[32m"  # 2xx: green
FAILURE = "\x1b[31m"  # 3xx-6xx: red (the call did not go through as asked)
NOT_SIP = DIM


def colour_wanted(choice: str, stream: IO[Any], environ: Mapping[str, str] | None = None) -> bool:
    if choice == "always":
        return True
    if choice == "never":
        return False
    environ = os.environ if environ is None else environ
    if environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
        return False
    return is_terminal(stream)


def is_terminal(stream: IO[Any]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def direction_colour(from_client: bool) -> str:
    return CLIENT_TO_SERVER if from_client else SERVER_TO_CLIENT


def status_colour(status: int) -> str:
    """The colour of a SIP message's start line: a request, or a response by its class."""
    if status == 0:
        return REQUEST
    if status < 200:
        return PROVISIONAL
    if status < 300:
        return SUCCESS
    return FAILURE


def paint(code: str, text: str) -> str:
    return f"{code}{text}{RESET}" if text else text
