"""Keys and key logs from files, secrets embedded in a capture, and the key-log export."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
from collections import OrderedDict

from captagent_tls.capture import CaptureError
from captagent_tls.capture.files import CaptureReader
from captagent_tls.config.settings import Settings
from captagent_tls.errors import UserError
from captagent_tls.sinks import write_failed
from captagent_tls.tls.events import SessionSecret
from captagent_tls.tls.keylog import KeyLogResult, load_key_log
from captagent_tls.tls.keys import KeyStore

log = logging.getLogger("captagent_tls")


def load_rsa_key_files(settings: Settings, keys: KeyStore, live: bool = False) -> None:
    if not settings.key:
        keys.clear_rsa_keys()
        return
    from captagent_tls.keyfiles import key_file_mode_warning, load_rsa_keys

    # the bytes that were typed, even when they are not UTF-8 (argv keeps them as surrogates)
    password = os.fsencode(settings.key_password) if settings.key_password is not None else None
    loaded = [(path, load_rsa_keys(path, password)) for path in settings.key]
    keys.clear_rsa_keys()
    for path, private_keys in loaded:
        warning = key_file_mode_warning(path) if live else None
        if warning:
            log.warning("%s", warning)
        for private_key in private_keys:
            keys.add_rsa_key(private_key, path)


def load_key_log_files(settings: Settings, keys: KeyStore) -> None:
    for path in settings.keylog:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except OSError as exc:
            raise UserError(f"cannot read key log {path}: {exc.strerror or exc}") from None
        report_key_log(path, load_key_log(text, keys))


def report_key_log(source: str, result: KeyLogResult) -> None:
    if result.malformed_lines:
        print(f"captagent-tls: warning: {source}: {result.describe_malformed()}", file=sys.stderr)


def embedded_secrets(path: str, keys: KeyStore) -> None:
    """Secrets in pcapng Decryption Secrets Blocks, read before decryption starts."""
    if path == "-":
        return  # standard input cannot be read twice: blocks apply where they appear

    def add(text: bytes) -> None:
        report_key_log(
            f"{path} (embedded secrets)", load_key_log(text.decode("utf-8", "replace"), keys)
        )

    with CaptureReader(path, on_secrets=add) as reader:
        if reader.is_pcapng:
            # damage is reported by the pass that decrypts: what comes before it still counts
            with contextlib.suppress(CaptureError):
                for _ in reader:
                    pass


class KeyLogExporter:
    """Writes CLIENT_RANDOM lines for sessions whose secret did not come from a key log.

    The file holds secrets: it is created 0600.  A session seen again (a resumption) is not
    written twice, as far as the last REMEMBERED sessions go: a daemon must not remember every
    session it ever saw, and a line written twice does no harm.
    """

    REMEMBERED = 65_536

    def __init__(self, path: str):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self.out = open(fd, "a", encoding="ascii")  # noqa: SIM115 - closed in close()
            mode = os.fstat(fd).st_mode
        except OSError as exc:
            raise UserError(f"cannot write key log {path}: {exc.strerror or exc}") from None
        self.path = path
        if stat.S_ISREG(mode) and mode & 0o077:
            log.warning(
                "%s is readable or writable by group or others, and it will hold "
                "session secrets (chmod 600 it)",
                path,
            )
        self._written: OrderedDict[bytes, None] = OrderedDict()
        self.lines = 0

    def write(self, secret: SessionSecret) -> None:
        if secret.source == "key log" or secret.client_random in self._written:
            return
        self._written[secret.client_random] = None
        if len(self._written) > self.REMEMBERED:
            self._written.popitem(last=False)
        try:
            self.out.write(
                f"CLIENT_RANDOM {secret.client_random.hex()} {secret.master_secret.hex()}\n"
            )
            self.out.flush()
        except OSError as exc:
            raise write_failed(self.out, exc, self.path) from None
        self.lines += 1

    def close(self) -> None:
        try:
            self.out.close()
        except OSError as exc:
            raise write_failed(self.out, exc, self.path) from None

    def closing_line(self) -> str:
        return (
            f"exported key log: {self.path}: {self.lines} CLIENT_RANDOM lines added "
            "(mode 0600: it holds secrets)"
        )


def key_log_exporter(settings: Settings) -> KeyLogExporter | None:
    return KeyLogExporter(settings.export_keylog) if settings.export_keylog else None
