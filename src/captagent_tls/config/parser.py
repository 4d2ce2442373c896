"""The command line's options, made from the option table.

:func:`add_options` gives an argparse parser one argument per row of
:data:`captagent_tls.config.options.TABLE`, in the table's order and ``--help`` sections;
the parser itself (its name, description and how it reports mistakes) is the command line's
(:func:`captagent_tls.cli.build_parser`).
"""

from __future__ import annotations

import argparse
from typing import Any

from captagent_tls import __version__
from captagent_tls.config.options import TABLE, Option, value_type
from captagent_tls.config.values import BOOL, LIST

__all__ = ["add_options", "argument_of"]


def argument_of(row: Option) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The flags and ``add_argument`` keywords of one row."""
    flags = (*row.flags, row.alias) if row.alias else row.flags
    default = row.default() if callable(row.default) else row.default
    keywords: dict[str, Any] = {"help": row.help, "default": default}
    if row.kind == BOOL:
        keywords["action"] = argparse.BooleanOptionalAction
        return flags, keywords
    if row.counted:
        keywords["action"] = "count"
        return flags, keywords
    keywords["type"] = value_type(row.dest)
    keywords["metavar"] = row.metavar
    if row.kind == LIST:
        keywords["action"] = "append"
        keywords["default"] = list(default) if isinstance(default, list) else []
    if row.choices:
        keywords["choices"] = row.choices
    return flags, keywords


def add_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every option of the table, and ``--version``; the parser, for chaining."""
    sections: dict[str, argparse._ArgumentGroup] = {}
    for row in TABLE:
        target: argparse._ActionsContainer = parser
        if row.group is not None:
            if row.group not in sections:
                sections[row.group] = parser.add_argument_group(row.group)
            target = sections[row.group]
        flags, keywords = argument_of(row)
        target.add_argument(*flags, **keywords)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser
