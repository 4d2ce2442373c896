"""What every configuration file shares: the error that names it, a bound on its size, and
file names inside it taken relative to its folder."""

from __future__ import annotations

from pathlib import Path

from captagent_tls.config.options import PATH_OPTIONS
from captagent_tls.config.values import shown
from captagent_tls.errors import UserFacingError

#: The most a configuration file may hold: captagent's and ours are a few KiB.
MAX_CONFIG_BYTES = 4 << 20


class ConfigError(UserFacingError):
    """A configuration file that cannot be used; the message is one line naming the file."""


def read_limited(path: str | Path) -> bytes:
    """A configuration file's bytes; ConfigError for one too large to be one (/dev/zero)."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: more than {MAX_CONFIG_BYTES >> 20} MiB, too large for a configuration file"
        )
    return data


def relative_to(base: Path, name: str) -> str:
    if name == "-" or not name:
        return name
    try:
        path = Path(name).expanduser()
    except RuntimeError:  # ~user of a user who does not exist here (or no home directory)
        user = name[1:].split("/", 1)[0]
        why = f"there is no user {shown(user)} here" if user else "there is no home directory"
        raise ConfigError(f"file name {shown(name)}: {why}") from None
    return str(path if path.is_absolute() else base / path)


def resolve_paths(values: dict[str, object], base: Path) -> None:
    """File names (the options marked ``path`` in the table) relative to *base*."""
    for dest in PATH_OPTIONS & values.keys():
        value = values[dest]
        if isinstance(value, list):
            values[dest] = [relative_to(base, v) for v in value]
        elif isinstance(value, str):
            values[dest] = relative_to(base, value)
