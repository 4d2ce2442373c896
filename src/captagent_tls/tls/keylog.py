"""NSS key log lines (SSLKEYLOGFILE) into a ``KeyStore``.  Sans-IO: text in, counts out.

Formats, as Wireshark reads them:
  CLIENT_RANDOM <client random> <master secret>
  PMS_CLIENT_RANDOM <client random> <pre-master secret>
  RSA <first 8 bytes of the encrypted pre-master> <pre-master secret>
  RSA Session-ID:<session id> Master-Key:<master secret>
  <TLS 1.3 label> <client random> <secret>
"""

from __future__ import annotations

from dataclasses import dataclass, field

from captagent_tls.tls.keys import KeyStore

TLS13_LABELS = frozenset(
    (
        "CLIENT_EARLY_TRAFFIC_SECRET",
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
        "SERVER_HANDSHAKE_TRAFFIC_SECRET",
        "CLIENT_TRAFFIC_SECRET_0",
        "SERVER_TRAFFIC_SECRET_0",
        "EXPORTER_SECRET",
        "EARLY_EXPORTER_SECRET",
    )
)
# each entry stores the one string object per label, not the copy split from its line
_LABEL_OBJECTS = {label: label for label in TLS13_LABELS}
MALFORMED_LINE_NUMBERS_KEPT = 10  # a result names this many; the rest are only counted


@dataclass
class KeyLogResult:
    added: int = 0
    malformed: int = 0
    # the first MALFORMED_LINE_NUMBERS_KEPT malformed lines' numbers, 1-based
    malformed_lines: list[int] = field(default_factory=list)

    def describe_malformed(self, line_numbers: bool = True) -> str:
        """Counts and line numbers only: never a line's text, which may hold a secret."""
        count = self.malformed
        text = f"{count} malformed key log line(s) ignored"
        if not line_numbers:
            return text
        shown = ", ".join(str(n) for n in self.malformed_lines)
        return f"{text} (line {shown}{' ...' if count > len(self.malformed_lines) else ''})"


def _hex(text: str, sizes: tuple[int, ...]) -> bytes | None:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        return None
    return value if len(value) in sizes else None


def parse_line(line: str, keys: KeyStore) -> bool | None:
    """Add one line's secret.  True: added; None: blank or comment; False: malformed."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    parts = line.split()
    label = parts[0]
    if label == "RSA" and len(parts) == 3 and parts[1].startswith("Session-ID:"):
        session_id = _hex(parts[1][len("Session-ID:") :], tuple(range(1, 33)))
        master = (
            _hex(parts[2][len("Master-Key:") :], (48,))
            if parts[2].startswith("Master-Key:")
            else None
        )
        if session_id is None or master is None:
            return False
        keys.add_master_for_session(session_id, master)
        return True
    if len(parts) != 3:
        return False
    if label == "RSA":
        prefix, pre_master = _hex(parts[1], (8,)), _hex(parts[2], (48,))
        if prefix is None or pre_master is None:
            return False
        keys.add_pre_master_for_prefix(prefix, pre_master)
        return True
    client_random = _hex(parts[1], (32,))
    if client_random is None:
        return False
    if label == "CLIENT_RANDOM":
        secret = _hex(parts[2], (48,))
    elif label == "PMS_CLIENT_RANDOM":
        secret = _hex(parts[2], tuple(range(1, 513)))
    elif label in TLS13_LABELS:
        secret = _hex(parts[2], (32, 48, 64))
    else:
        return False
    if secret is None:
        return False
    entry = keys.client_random_entry(client_random)
    if label == "CLIENT_RANDOM":
        entry.master_secret = secret
    elif label == "PMS_CLIENT_RANDOM":
        entry.pre_master = secret
    else:
        entry.add_tls13(_LABEL_OBJECTS[label], secret)
    return True


def load_key_log(text: str, keys: KeyStore, first_line: int = 1) -> KeyLogResult:
    result = KeyLogResult()
    for number, line in enumerate(text.splitlines(), start=first_line):
        outcome = parse_line(line, keys)
        if outcome:
            result.added += 1
        elif outcome is False:
            result.malformed += 1
            if len(result.malformed_lines) < MALFORMED_LINE_NUMBERS_KEPT:
                result.malformed_lines.append(number)
    if result.added:
        keys.generation += 1
    return result
