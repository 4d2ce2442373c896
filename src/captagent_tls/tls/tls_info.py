"""What the application bytes of a session travel in: version and suite names, shared."""

from __future__ import annotations

from functools import lru_cache

from captagent_tls.tls.events import TlsInfo
from captagent_tls.tls.keyschedule import version_name
from captagent_tls.tls.suites import suite_name


@lru_cache(maxsize=256)
def tls_info(version: int, suite: int) -> TlsInfo:
    """Shared by every session of the same version and suite."""
    return TlsInfo(version_name(version), suite_name(suite))


NO_INFO = TlsInfo("unknown", "unknown")  # TLS whose ServerHello we missed
