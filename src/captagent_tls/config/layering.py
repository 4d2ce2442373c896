"""Layers of options: built-in defaults < configuration files < the command line.

:func:`merge` layers values option by option, and :func:`explicit_args` tells which options
the user actually typed, so a default on the command line never hides a file's value.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

__all__ = ["ALTERNATIVES", "explicit_args", "merge", "resolve"]

#: Options that exclude one another: choosing one on the command line sets the others back
#: to their defaults, whatever a file says (``-r x.pcap`` with a file naming an interface
#: reads the file, as captagent's ``-D`` does).
ALTERNATIVES = (frozenset({"read", "interface"}),)


def merge(
    defaults: Mapping[str, object],
    file_values: Mapping[str, object],
    command_line_values: Mapping[str, object],
) -> dict[str, object]:
    """Command line > config file > defaults, option by option.

    A list from a higher layer replaces the lower one's (``-k a.key`` on the command line
    means only ``a.key``, whatever the file lists).  Lists are copied, never shared.  See
    :data:`ALTERNATIVES` for options that displace one another.
    """
    file_values = dict(file_values)
    for group in ALTERNATIVES:
        if group & command_line_values.keys():
            for dest in group - command_line_values.keys():
                file_values.pop(dest, None)
    merged: dict[str, object] = {}
    for layer in (defaults, file_values, command_line_values):
        for dest, value in layer.items():
            merged[dest] = list(value) if isinstance(value, list) else value
    return merged


class _TypedOnly(argparse.Namespace):
    """A namespace that seems to have every attribute already (reading a missing one gives
    None), so argparse fills in no defaults and only the options in argv get stored."""

    def __getattr__(self, name: str) -> None:
        if name.startswith("_"):  # argparse's own bookkeeping, and Python's
            raise AttributeError(name)
        return None


def explicit_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The dests of the options present in *argv*, whatever their values.

    argparse puts a default only where the namespace lacks the attribute; parsing into a
    namespace that lacks none leaves exactly the options the user typed (``--hep-id 2001``
    counts even though 2001 is the default).  The parser itself is not modified.
    """
    typed = parser.parse_args(argv, namespace=_TypedOnly())
    return set(vars(typed))


def resolve(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, file_values: Mapping[str, object]
) -> argparse.Namespace:
    """Parse *argv* and lay it over *file_values* and the parser's defaults.

    Options the parser does not know yet (from a file) are kept in the namespace too.
    """
    args = parser.parse_args(argv)
    defaults = {dest: parser.get_default(dest) for dest in vars(args)}
    given = explicit_args(parser, argv)
    typed = {dest: getattr(args, dest) for dest in given}
    return argparse.Namespace(**merge(defaults, file_values, typed))
