"""How ``tls://`` collectors are verified: the options and the OpenSSL context they make."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from captagent_tls.sinks.hep.addresses import HepConfigError
from captagent_tls.sinks.hep.collector import describe_error


@dataclass(frozen=True)
class TlsOptions:
    """How ``tls://`` collectors are verified.

    By default the system's CAs and the host name (or IP address) of the collector address.
    ``ca_file`` trusts that CA bundle *instead* (heplify-server setups usually make their own
    CA); ``server_name`` checks the certificate against this name (and sends it as SNI) when
    the collector is addressed by IP; ``insecure`` verifies nothing.  ``cert_file`` and
    ``key_file`` present a client certificate to collectors that ask for one.
    """

    ca_file: str | None = None
    insecure: bool = False
    server_name: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def make_ssl_context(options: TlsOptions) -> ssl.SSLContext:
    """The client context; :class:`HepConfigError` (one line) for files it cannot load."""
    if options.insecure:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        try:
            context = ssl.create_default_context(cafile=options.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise HepConfigError(
                f"cannot load HEP CA file {options.ca_file}: {describe_error(exc)}"
            ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if options.cert_file:
        try:
            context.load_cert_chain(options.cert_file, options.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise HepConfigError(
                f"cannot load HEP client certificate {options.cert_file}: {describe_error(exc)}"
            ) from None
    return context
