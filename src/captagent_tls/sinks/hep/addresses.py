"""Collector addresses and the errors of a HEP output that cannot work as configured.

This is all that the options and configuration files need to check a ``--hep`` value, so it
imports nothing of the sink, its sockets, threads or TLS.
"""

from __future__ import annotations

from captagent_tls.errors import UserFacingError
from captagent_tls.net.addresses import split_url

SCHEMES = ("udp", "tcp", "tls")


class HepConfigError(UserFacingError, ValueError):
    """A HEP output that cannot work as configured (address, CA file, limits)."""


class CollectorAddressError(HepConfigError):
    """A collector address that is malformed or cannot be resolved."""


def parse_collector(text: str) -> tuple[str, str, int]:
    """``[udp://|tcp://|tls://]HOST:PORT`` -> (scheme, host, port).  IPv6 hosts go in brackets."""
    try:
        return split_url(text, SCHEMES, default="udp")
    except ValueError as exc:
        raise CollectorAddressError(f"bad HEP collector {text!r}: {exc}") from None


def format_collector(scheme: str, host: str, port: int) -> str:
    """The canonical spelling of a collector address: ``tls://[2001:db8::1]:9061``."""
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
