"""captagent-tls's own configuration file, ``agent.toml`` (``-c``).

Keys are the command line's dest names (``hep_id``; ``hep-id`` too), at the top level or in
the tables of :data:`captagent_tls.config.options.TABLES`, both made from the option table.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path

from captagent_tls.config.files import ConfigError, read_limited, resolve_paths
from captagent_tls.config.options import OPTIONS, TABLES, check, describe_kind
from captagent_tls.config.values import type_name

__all__ = ["load_native"]

_TOML_WHERE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def _toml_syntax_error(name: str, exc: tomllib.TOMLDecodeError) -> str:
    message = str(exc)
    where = _TOML_WHERE.search(message)
    if where:
        return f"{name}:{where[1]}:{where[2]}: TOML syntax error: {message[: where.start()]}"
    return f"{name}: TOML syntax error: {message}"


def _unknown(name: str, key: str, known: Sequence[str], table: str | None = None) -> ConfigError:
    bare = key.rpartition(".")[2].replace("-", "_")
    close = difflib.get_close_matches(bare, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = f" in [{table}]" if table else ""
    return ConfigError(f"{name}: {key}: unknown key{where}{hint}")


def load_native(path: str | Path) -> dict[str, object]:
    """Read captagent-tls's TOML file into ``{dest: value}``.

    Keys are the command line's dest names (``hep_id``; ``hep-id`` too), at the top level or
    in the tables of :data:`TABLES`.  Relative file names are taken from the file's folder.
    """
    name = str(path)
    try:
        document = tomllib.loads(read_limited(path).decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {name}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not UTF-8 text (byte {exc.start + 1})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_toml_syntax_error(name, exc)) from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ConfigError(
            f"{name}: nested too deeply (arrays or inline tables within one another, hundreds deep)"
        ) from None

    values: dict[str, object] = {}
    set_by: dict[str, str] = {}

    def put(dest: str, key: str, value: object) -> None:
        if dest in set_by:
            raise ConfigError(f"{name}: {key}: {dest} is already set by {set_by[dest]}")
        try:
            values[dest] = check(dest, value)
        except ValueError as exc:
            raise ConfigError(f"{name}: {key}: {exc}") from None
        set_by[dest] = key

    for key, value in document.items():
        bare = key.replace("-", "_")
        if isinstance(value, dict) and bare in TABLES:
            names = TABLES[bare]
            for sub, sub_value in value.items():
                dotted = f"{key}.{sub}"
                dest = names.get(sub.replace("-", "_"))
                if dest is None:
                    raise _unknown(name, dotted, sorted(names), table=key)
                if isinstance(sub_value, dict):
                    raise ConfigError(
                        f"{name}: {dotted}: expected {describe_kind(dest)}, got a table"
                    )
                put(dest, dotted, sub_value)
        elif bare in OPTIONS:
            if isinstance(value, dict):
                raise ConfigError(f"{name}: {key}: expected {describe_kind(bare)}, got a table")
            put(bare, key, value)
        elif bare in TABLES:
            raise ConfigError(
                f"{name}: {key}: expected a table ([{key}]), got {type_name(value)} {value!r}"
            )
        else:
            raise _unknown(name, key, sorted([*OPTIONS, *TABLES]))
    resolve_paths(values, Path(path).parent)
    return values
