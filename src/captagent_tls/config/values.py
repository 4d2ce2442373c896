"""What an option's value may be: its kind (string, integer, size...) and its range.

The command line and the configuration files (TOML and captagent XML alike) read values
through :func:`captagent_tls.config.options.check`, which uses what is here, so a value is
read the same way and refused with the same words wherever it comes from.  The rules:

* numbers are finite and within a range that means something: timeouts above 0 and at most a
  day, sizes up to what the kernel, libpcap or the format holds, counts up to what fits in
  memory;
* sizes in bytes are integers, or numbers ending in K, M or G (``16M``), as ``--hep-queue``;
* strings never hold a NUL character (no file name, filter or password can), and strings that
  go into HEP chunks encode to UTF-8 and fit their chunk;
* a secret's value never appears in a message.

The checks of addresses use the parsers of the code that opens them (HEP collectors,
key-log listeners); those modules are imported when such a value is checked, not before, so
that a run without them does not pay for their import.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from captagent_tls.sinks.hep.queue import QueueLimits

STR, BOOL, INT, FLOAT, LIST, SIZE, CHOICE = (
    "string",
    "boolean",
    "integer",
    "number",
    "list",
    "size",
    "choice",
)
COUNT_OR_AUTO = "count or auto"  # a whole number, or "auto" (--workers)

DAY_S = 86_400
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
MAX_BUFFER_KIB = (2 * GIB - 1) // KIB  # libpcap takes the buffer size in bytes, as a C int
HEP_CHUNK_VALUE = 0xFFFF - 6  # a HEP chunk's 16-bit length counts its 6-byte header
IFNAMSIZ = 16  # Linux interface names: 15 bytes and a NUL
MAX_COUNT = 10_000_000  # flows, cached sessions, queued packets: beyond this, memory runs out

EXPECTED = {
    STR: "a string", BOOL: "true or false", INT: "an integer", FLOAT: "a number",
    LIST: "a string or an array of strings",
    SIZE: "a size in bytes (an integer, or a number ending in K, M or G)",
    CHOICE: "a string",
    COUNT_OR_AUTO: 'an integer or "auto"',
}  # fmt: skip

Check = Callable[[object], "str | None"]


def shown(value: object) -> str:
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
    for kind, name in (
        (str, "string"),
        (int, "integer"),
        (float, "float"),
        (list, "array"),
        (dict, "table"),
    ):
        if isinstance(value, kind):
            return name
    return "date/time"


_SIZE = re.compile(r"([0-9]+)([KMG]?)", re.IGNORECASE)
_UNITS = {"": 1, "K": KIB, "M": MIB, "G": GIB}


def parse_size(text: str) -> int:
    """``65536``, ``64K``, ``16M``, ``1G`` -> bytes; ValueError otherwise."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"expected {EXPECTED[SIZE]}, got {shown(text)}")
    return int(match[1]) * _UNITS[match[2].upper()]


def typed(kind: str, value: object) -> object:
    """The value as the kind, or raise ValueError with what is wrong."""
    wrong = ValueError(f"expected {EXPECTED[kind]}, got {type_name(value)} {shown(value)}")
    if kind in (STR, CHOICE):
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
            raise ValueError(
                f"item {i + 1}: expected a string, got {type_name(item)} {shown(item)}"
            )
    return list(value)


def from_text(kind: str, text: str) -> object:
    """A command-line word as the kind."""
    if kind == INT:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {shown(text)}") from None
    if kind == FLOAT:
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {shown(text)}") from None
        return typed(FLOAT, number)
    if kind == SIZE:
        return parse_size(text)
    if kind == COUNT_OR_AUTO:
        if text.strip().lower() == "auto":
            return "auto"
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected {EXPECTED[kind]}, got {shown(text)}") from None
    return text  # STR, CHOICE, and one item of a LIST


# --------------------------------------------------------------------------------- checks


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else f"{value}"


def between(low: float, high: float, unit: str = "", above: bool = False) -> Check:
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


def one_of(choices: tuple[str, ...]) -> Check:
    def check(value: object) -> str | None:
        if value in choices:
            return None
        return f"expected {', '.join(choices[:-1])} or {choices[-1]}, got {shown(value)}"

    return check


def not_empty(value: object) -> str | None:
    return None if value else "must not be empty"


def interface_name(value: object) -> str | None:
    assert isinstance(value, str)
    if not value:
        return "must not be empty"
    if len(os.fsencode(value)) >= IFNAMSIZ:
        return f"{shown(value)} is longer than an interface name can be (15 bytes)"
    return None


def utf8_text(value: object) -> str | None:
    """Text handed to a library as UTF-8 (a BPF filter to libpcap)."""
    assert isinstance(value, str)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "not UTF-8 text"
    return None


def hep_chunk(value: object) -> str | None:
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
    from captagent_tls.sinks.hep.addresses import HepConfigError
    from captagent_tls.sinks.hep.queue import QueueLimits

    messages_text, _, bytes_text = text.replace(" ", "").partition(",")
    try:
        messages = int(messages_text)
        size = parse_size(bytes_text) if bytes_text else QueueLimits().max_bytes
    except ValueError:
        raise HepConfigError(
            f"bad HEP queue {shown(text)}: expected MESSAGES or MESSAGES,BYTES, e.g. 100000,64M"
        ) from None
    if not 1 <= messages <= MAX_COUNT:
        raise HepConfigError(f"bad HEP queue {shown(text)}: from 1 to {MAX_COUNT} messages")
    if not 1 <= size <= 64 * GIB:
        raise HepConfigError(f"bad HEP queue {shown(text)}: from 1 byte to 64G")
    return QueueLimits(messages, size)


def hep_queue(value: object) -> str | None:
    from captagent_tls.sinks.hep.addresses import HepConfigError

    assert isinstance(value, str)
    try:
        parse_queue_limits(value)
    except HepConfigError as exc:
        return str(exc)
    return None


def collectors(value: object) -> str | None:
    from captagent_tls.sinks.hep.addresses import CollectorAddressError, parse_collector

    assert isinstance(value, list)
    for address in value:
        try:
            parse_collector(address)
        except CollectorAddressError as exc:
            return str(exc)
    return None


def listeners(value: object) -> str | None:
    from captagent_tls.keysources import KeySourceError, parse_listen_url

    assert isinstance(value, list)
    for url in value:
        try:
            parse_listen_url(url)
        except KeySourceError as exc:
            return str(exc)
    return None


MAX_WORKERS = 1024


def workers(value: object) -> str | None:
    """``--workers``: "auto", or from 1 to MAX_WORKERS."""
    if value == "auto":
        return None
    return between(1, MAX_WORKERS)(value)


def host_port(value: object) -> str | None:
    from captagent_tls.net.addresses import split_host_port

    assert isinstance(value, str)
    try:
        split_host_port(value)
    except ValueError as exc:
        return f"{exc}, got {shown(value)}"
    return None
