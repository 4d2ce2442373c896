"""What every option accepts: its kind and its range, checked in one place.

The command line (each option's argparse ``type`` in :func:`captagent_tls.cli.build_parser`)
and the configuration files (:mod:`captagent_tls.config`, TOML and captagent XML alike) both go
through :func:`check`, so a value is read the same way and refused with the same words
wherever it comes from.  The rules:

* numbers are finite and within a range that means something: timeouts above 0 and at most a
  day, sizes up to what the kernel, libpcap or the format holds, counts up to what fits in
  memory;
* sizes in bytes are integers, or numbers ending in K, M or G (``16M``), as ``--hep-queue``;
* strings never hold a NUL character (no file name, filter or password can), and strings that
  go into HEP chunks encode to UTF-8 and fit their chunk;
* a secret's value never appears in a message.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from captagent_tls.keysources import KeySourceError, parse_listen_url
from captagent_tls.net.addresses import split_host_port
from captagent_tls.sinks.hep_transport import (
    CollectorAddressError,
    HepConfigError,
    QueueLimits,
    parse_collector,
)

__all__ = [
    "OPTIONS",
    "Option",
    "check",
    "describe_kind",
    "parse_queue_limits",
    "parse_size",
    "type_name",
    "value_type",
]

STR, BOOL, INT, FLOAT, LIST, SIZE = "string", "boolean", "integer", "number", "list", "size"
COUNT_OR_AUTO = "count or auto"

DAY_S = 86_400
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
MAX_BUFFER_KIB = (2 * GIB - 1) // KIB  # libpcap takes the buffer size in bytes, as a C int
HEP_CHUNK_VALUE = 0xFFFF - 6  # a HEP chunk's 16-bit length counts its 6-byte header
IFNAMSIZ = 16  # Linux interface names: 15 bytes and a NUL
MAX_COUNT = 10_000_000  # flows, cached sessions, queued packets: beyond this, memory runs out

_EXPECTED = {
    STR: "a string", BOOL: "true or false", INT: "an integer", FLOAT: "a number",
    LIST: "a string or an array of strings",
    SIZE: "a size in bytes (an integer, or a number ending in K, M or G)",
    COUNT_OR_AUTO: 'an integer or "auto"',
}  # fmt: skip

Check = Callable[[object], "str | None"]


@dataclass(frozen=True)
class Option:
    kind: str
    check: Check | None = None  # the value (of its kind) -> what is wrong with it, or None
    secret: bool = False  # never shown in a message


def describe_kind(dest: str) -> str:
    """What the option expects, as in "expected an integer"."""
    return _EXPECTED[OPTIONS[dest].kind]


# --------------------------------------------------------------------------------- values


def _shown(value: object) -> str:
    """A value for a message: repr, cut short (a 70,000-character name is not repeated)."""
    text = repr(value)
    if len(text) > 60:
        size = f" ({len(value)} characters)" if isinstance(value, str) else ""
        return f"{text[:40]}...{size}"
    return text


def type_name(value: object) -> str:
    """How a file spells the type of a value (TOML's names)."""
    if isinstance(value, bool):
        return "boolean"
    for kind, name in ((str, "string"), (int, "integer"), (float, "float"), (list, "array"),
                       (dict, "table")):
        if isinstance(value, kind):
            return name
    return "date/time"


_SIZE = re.compile(r"([0-9]+)([KMG]?)", re.IGNORECASE)
_UNITS = {"": 1, "K": KIB, "M": MIB, "G": GIB}


def parse_size(text: str) -> int:
    """``65536``, ``64K``, ``16M``, ``1G`` -> bytes; ValueError otherwise."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"expected {_EXPECTED[SIZE]}, got {_shown(text)}")
    return int(match[1]) * _UNITS[match[2].upper()]


def _typed(kind: str, value: object) -> object:
    """The value as the option's kind, or raise ValueError with what is wrong."""
    wrong = ValueError(f"expected {_EXPECTED[kind]}, got {type_name(value)} {_shown(value)}")
    if kind == STR:
        if not isinstance(value, str):
            raise wrong
        return value
    if kind == BOOL:
        if not isinstance(value, bool):
            raise wrong
        return value
    if kind == INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if kind == COUNT_OR_AUTO:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if kind == SIZE:
        if isinstance(value, str):
            return parse_size(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if kind == FLOAT:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        return float(value)
    # LIST: one string stands for a list of one
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise wrong
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"item {i + 1}: expected a string, got {type_name(item)} "
                             f"{_shown(item)}")
    return list(value)


def _from_text(kind: str, text: str) -> object:
    """A command-line word as the option's kind."""
    if kind == INT:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {_shown(text)}") from None
    if kind == FLOAT:
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {_shown(text)}") from None
        return _typed(FLOAT, number)
    if kind == SIZE:
        return parse_size(text)
    if kind == COUNT_OR_AUTO and text.strip().lower() != "auto":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected {_EXPECTED[kind]}, got {_shown(text)}") from None
    if kind == COUNT_OR_AUTO:
        return "auto"
    return text  # STR, and one item of a LIST


# --------------------------------------------------------------------------------- checks


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else f"{value}"


def _between(low: float, high: float, unit: str = "", above: bool = False) -> Check:
    """low <= value <= high (low < value with ``above``)."""
    unit = f" {unit}" if unit else ""
    if above:
        wanted = f"must be more than {_number(low)} and at most {_number(high)}{unit}"
    else:
        wanted = f"must be between {_number(low)} and {_number(high)}{unit}"

    def check(value: object) -> str | None:
        assert isinstance(value, int | float)
        if (value > low if above else value >= low) and value <= high:
            return None
        return f"{wanted}, got {_number(value)}"

    return check


def _not_empty(value: object) -> str | None:
    return None if value else "must not be empty"


def _interface(value: object) -> str | None:
    assert isinstance(value, str)
    if not value:
        return "must not be empty"
    if len(os.fsencode(value)) >= IFNAMSIZ:
        return f"{_shown(value)} is longer than an interface name can be (15 bytes)"
    return None


def _text(value: object) -> str | None:
    """Text handed to a library as UTF-8 (a BPF filter to libpcap)."""
    assert isinstance(value, str)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "not UTF-8 text"
    return None


def _hep_chunk(value: object) -> str | None:
    """A string sent in a HEP chunk: UTF-8 that fits in one chunk."""
    assert isinstance(value, str)
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "not UTF-8 text (HEP sends it as UTF-8)"
    if size > HEP_CHUNK_VALUE:
        return f"{size} bytes in UTF-8, more than a HEP chunk holds ({HEP_CHUNK_VALUE})"
    return None


def parse_queue_limits(text: str) -> QueueLimits:
    """``MESSAGES[,BYTES]`` (``--hep-queue``): packets and bytes one TCP/TLS collector may
    hold; bytes may end in K, M or G."""
    messages_text, _, bytes_text = text.replace(" ", "").partition(",")
    try:
        messages = int(messages_text)
        size = parse_size(bytes_text) if bytes_text else QueueLimits().max_bytes
    except ValueError:
        raise HepConfigError(f"bad HEP queue {_shown(text)}: expected MESSAGES or "
                             "MESSAGES,BYTES, e.g. 100000,64M") from None
    if not 1 <= messages <= MAX_COUNT:
        raise HepConfigError(f"bad HEP queue {_shown(text)}: from 1 to {MAX_COUNT} messages")
    if not 1 <= size <= 64 * GIB:
        raise HepConfigError(f"bad HEP queue {_shown(text)}: from 1 byte to 64G")
    return QueueLimits(messages, size)


def _hep_queue(value: object) -> str | None:
    assert isinstance(value, str)
    try:
        parse_queue_limits(value)
    except HepConfigError as exc:
        return str(exc)
    return None


def _collectors(value: object) -> str | None:
    assert isinstance(value, list)
    for address in value:
        try:
            parse_collector(address)
        except CollectorAddressError as exc:
            return str(exc)
    return None


def _listeners(value: object) -> str | None:
    assert isinstance(value, list)
    for url in value:
        try:
            parse_listen_url(url)
        except KeySourceError as exc:
            return str(exc)
    return None


MAX_WORKERS = 1024


def _workers(value: object) -> str | None:
    if value == "auto":
        return None
    return _between(1, MAX_WORKERS)(value)


def _host_port(value: object) -> str | None:
    assert isinstance(value, str)
    try:
        split_host_port(value)
    except ValueError as exc:
        return f"{exc}, got {_shown(value)}"
    return None


#: Every option a file may set, by argparse ``dest``.
OPTIONS: dict[str, Option] = {
    # capture
    "read": Option(STR),
    "interface": Option(STR, _interface),
    "filter": Option(STR, _text),
    "promisc": Option(BOOL),
    "snaplen": Option(INT, _between(1, 262144, "bytes")),
    "buffer_size": Option(INT, _between(1, MAX_BUFFER_KIB, "KiB (2 GiB)")),
    # keys
    "key": Option(LIST),
    "key_password": Option(STR, secret=True),
    "keylog": Option(LIST),
    "keylog_listen": Option(LIST, _listeners),
    "keylog_listen_remote": Option(BOOL),
    "key_wait": Option(FLOAT, _between(0, DAY_S, "seconds (a day)")),
    "key_hold_flow": Option(SIZE, _between(16 * KIB, 16 * GIB, "bytes (16K to 16G)")),
    "key_hold_total": Option(SIZE, _between(16 * KIB, 64 * GIB, "bytes (16K to 64G)")),
    "export_keylog": Option(STR),
    # outputs
    "json": Option(BOOL),
    "console": Option(BOOL),
    "write": Option(STR),
    # HEP
    "hep": Option(LIST, _collectors),
    "hep_id": Option(INT, _between(0, 0xFFFFFFFF)),
    "hep_password": Option(STR, _hep_chunk, secret=True),
    "hep_node_name": Option(STR, _hep_chunk),
    "hep_correlation": Option(BOOL),
    "hep_ip_proto": Option(INT, _between(0, 255)),
    "hep_ca": Option(STR),
    "hep_insecure": Option(BOOL),
    "hep_queue": Option(STR, _hep_queue),
    # tuning
    "flow_timeout": Option(FLOAT, _between(0, DAY_S, "seconds (a day)", above=True)),
    "max_flow_buffer": Option(SIZE, _between(1, GIB, "bytes (1G, the largest TCP window)")),
    "max_flows": Option(INT, _between(1, MAX_COUNT)),
    "session_cache": Option(INT, _between(1, MAX_COUNT)),
    # the agent itself
    "user": Option(STR, _not_empty),
    "metrics": Option(STR, _host_port),
    "stats_interval": Option(FLOAT, _between(1, DAY_S, "seconds (a day)")),
    "workers": Option(COUNT_OR_AUTO, _workers),
    "quiet": Option(BOOL),
    "verbose": Option(INT, _between(0, 10)),
}


def check(dest: str, value: object) -> object:
    """Type and range check one option's value (from a file, or a command-line word already
    converted); the value as the option's kind, or ValueError saying what is wrong."""
    option = OPTIONS[dest]
    if option.secret and not isinstance(value, str):
        raise ValueError(f"expected {_EXPECTED[option.kind]}, got {type_name(value)} "
                         "(value not shown)")
    value = _typed(option.kind, value)
    texts = value if isinstance(value, list) else [value] if isinstance(value, str) else []
    if any("\0" in text for text in texts):
        raise ValueError("must not contain a NUL character")
    problem = option.check(value) if option.check else None
    if problem:
        raise ValueError(problem)
    return value


def value_type(dest: str) -> Callable[[str], object]:
    """The argparse ``type`` of an option: a command-line word, converted and checked by the
    same rules as a file's value.  For a list option it takes one item."""
    kind = OPTIONS[dest].kind

    def convert(text: str) -> object:
        try:
            if kind == LIST:
                return check(dest, [text])[0]  # type: ignore[index]
            return check(dest, _from_text(kind, text))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.option = dest  # type: ignore[attr-defined]  # tests find the rule of an action
    convert.__name__ = f"{dest} value"
    return convert
