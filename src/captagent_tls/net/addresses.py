"""Printable forms of packed IP addresses (cached: a capture has few distinct addresses)."""

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
