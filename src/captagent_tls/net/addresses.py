"""Addresses: printable forms of packed IP addresses (cached: a capture has few distinct
addresses), and the one parser of ``HOST:PORT`` and ``scheme://HOST:PORT`` options."""

from __future__ import annotations

import socket
from functools import lru_cache


@lru_cache(maxsize=4096)
def ip_text(addr: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(addr) == 16 else socket.AF_INET, addr)


def format_endpoint(endpoint: tuple[bytes, int]) -> str:
    addr, port = endpoint
    text = ip_text(addr)
    return f"[{text}]:{port}" if len(addr) == 16 else f"{text}:{port}"


def split_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port); ValueError saying what is wrong."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        port = rest[1:] if bracket and rest.startswith(":") else ""
    else:
        host, _, port = text.rpartition(":")
    if not host or not port:
        raise ValueError("expected HOST:PORT")
    if not port.isascii() or not port.isdigit():
        raise ValueError(f"port {port!r} is not a number")
    if not 0 < int(port) < 65536:
        raise ValueError(f"port {int(port)} is out of range (1 to 65535)")
    return host, int(port)


def split_url(
    text: str, schemes: tuple[str, ...], default: str | None = None
) -> tuple[str, str, int]:
    """``scheme://HOST:PORT`` (or a bare ``HOST:PORT`` when there is a default scheme) ->
    (scheme, host, port); ValueError saying what is wrong."""
    choices = f"{', '.join(schemes[:-1])} or {schemes[-1]}"
    scheme_problem = f"scheme must be {choices} (use {schemes[0]}://HOST:PORT)"
    scheme, sep, rest = text.partition("://")
    if not sep:
        if default is None:
            raise ValueError(scheme_problem)
        scheme, rest = default, text
    scheme = scheme.lower()
    if scheme not in schemes:
        raise ValueError(scheme_problem)
    return (scheme, *split_host_port(rest))
