"""Options and configuration files.

* :mod:`.options` is the table of every option (a row each), and :mod:`.values` the kinds and
  ranges their values are checked by;
* :mod:`.parser` makes the command line's options from the table;
* :mod:`.toml` reads ``agent.toml`` (``-c``), :mod:`.captagent` a captagent installation
  (``--captagent-config``, through the bounded XML reader of :mod:`.xml`);
* :mod:`.layering` lays the command line over the files over the defaults.

Every problem with a file is a :class:`ConfigError` whose message is one line naming the file
(and the line, or the key, when there is one).

Only what a run uses is imported: the names below are loaded from their modules when first
asked for, so ``from captagent_tls.config import ConfigError`` does not import the TOML or
XML readers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from captagent_tls.config.files import ConfigError

if TYPE_CHECKING:
    from captagent_tls.config.captagent import load_captagent
    from captagent_tls.config.layering import ALTERNATIVES, explicit_args, merge, resolve
    from captagent_tls.config.options import OPTIONS, TABLE, TABLES, check
    from captagent_tls.config.toml import load_native

__all__ = [
    "ALTERNATIVES",
    "OPTIONS",
    "TABLE",
    "TABLES",
    "ConfigError",
    "check",
    "explicit_args",
    "load_captagent",
    "load_native",
    "merge",
    "resolve",
]

_HOMES = {
    "load_captagent": "captagent", "load_native": "toml",
    "ALTERNATIVES": "layering", "explicit_args": "layering", "merge": "layering",
    "resolve": "layering",
    "OPTIONS": "options", "TABLE": "options", "TABLES": "options", "check": "options",
}  # fmt: skip


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
