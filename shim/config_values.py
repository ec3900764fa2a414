"""The values of single settings: their checks, and the built-in workspaces.

Each check takes the setting's name and its value and returns the value in
canonical form, or raises :class:`ConfigError` with one line naming the
setting.  :mod:`shim.config` declares the settings with them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: The TOML array of tables that lists the built-in workspaces.
WORKSPACES_SECTION = "builtin_workspaces"


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names it."""


_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
_EXPECTED = {
    "str": "a string",
    "float": "a number",
    "int": "a whole number",
    "bool": "true or false",
    "list": "an array of strings",
}


def coerce(name: str, kind: str, value):
    """A TOML or environment value converted to the setting's *kind* (one of :data:`_EXPECTED`), or ConfigError."""
    try:
        if kind in ("float", "int"):
            if isinstance(value, bool) or (kind == "int" and isinstance(value, float) and not value.is_integer()):
                raise ValueError
            number = float(value) if kind == "float" else int(value)
            if number < 0:
                raise ConfigError(f"setting {name}: must not be negative, got {value!r}")
            return number
        if kind == "bool":
            if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
                return _BOOLEANS[value.strip().lower()]
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind == "list":
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return tuple(value)
        if not isinstance(value, str):
            raise ValueError
        return value
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name}: expected {_EXPECTED[kind]}, got {value!r}") from None


# --- checks of single values: (setting name, value) -> value, or raise ConfigError -----------


def canonical_prefix(name: str, value: str) -> str:
    """``""`` for the root, else ``/a/b``; a prefix must start with ``/``."""
    if not value.startswith("/"):
        raise ConfigError(f"setting {name}: a path prefix must start with '/', got {value!r}")
    parts = [p for p in value.split("/") if p]
    return "/" + "/".join(parts) if parts else ""


def check_optional_prefix(name: str, value: str) -> str | None:
    return None if value == "" else canonical_prefix(name, value)


def check_upstream_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https", "fcgi", "unix") or (
        parts.scheme in ("http", "https") and not parts.hostname
    ):
        raise ConfigError(
            f"setting {name}: expected http://host[:port][/path], https://..., fcgi://host:port "
            f"or unix:/path, got {value!r}"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"setting {name}: no query or fragment allowed, got {value!r}")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ConfigError(f"setting {name}: the port is not a number in {value!r}") from None
    return value


def check_database_url(name: str, value: str) -> str:
    """An SQLAlchemy URL of an engine Pydio supports, whose driver is installed."""
    if not value:
        return value
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    example = "mysql+pymysql://user:pw@host/db, postgresql+psycopg2://..., sqlite:////path/pydio.db"
    try:
        url = make_url(value)
        backend = url.get_backend_name()
    except ArgumentError:
        raise ConfigError(f"setting {name}: not an SQLAlchemy URL (expected e.g. {example})") from None
    if backend not in ("mysql", "postgresql", "sqlite"):
        raise ConfigError(f"setting {name}: engine {backend!r} is not one Pydio supports (mysql, postgresql, sqlite)")
    fix = {"mysql": "mysql+pymysql://", "postgresql": "postgresql+psycopg2://", "sqlite": "sqlite:///"}[backend]
    try:
        url.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise ConfigError(f"setting {name}: SQLAlchemy has no driver {url.drivername!r}; use {fix}...") from None
    except ImportError as exc:
        raise ConfigError(
            f"setting {name}: {url.drivername}:// needs the Python module {exc.name or 'of its driver'}"
            f", which is not installed; use {fix}... (installed with the shim)"
        ) from None
    return value


def check_public_origin(name: str, value: str) -> str:
    if not value:
        return value
    parts = urlsplit(value)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ConfigError(f"setting {name}: expected scheme://host[:port] (no path), got {value!r}")
    return value.rstrip("/")


def check_networks(name: str, value: tuple[str, ...]) -> tuple[str, ...]:
    for entry in value:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(f"setting {name}: {entry!r} is not an IP address or network") from None
    return value


def check_admin_path(name: str, value: str) -> str:
    if value and not value.startswith("/"):
        raise ConfigError(f"setting {name}: must start with '/' (or be empty to turn it off)")
    return value


def check_bind(name: str, value: str) -> str:
    if value.startswith(("unix:", "fd://")):
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"setting {name}: expected host:port or unix:/path, got {value!r}")
    return value


def check_log_level(name: str, value: str) -> str:
    if value.upper() not in LOG_LEVELS:
        raise ConfigError(f"setting {name}: one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return value.upper()


# --- built-in workspaces ----------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltinWorkspace:
    """A workspace defined in Pydio's ``conf/bootstrap_repositories.php``.

    Those live in PHP, not in the database, so the shim is told about them here.
    ``path`` and ``container`` are the raw option values (``AJXP_USER`` and
    ``AJXP_GROUP_PATH`` in them decide the security scope).
    """

    id: str
    slug: str
    path: str = ""
    container: str = ""
    access_type: str = "fs"
    recycle_bin: str = ""
    syncable: bool = False


#: The stock built-in workspaces of a Pydio 8 install (ids 0 and 1, see docs/configuration.md).
#: ``my-files`` is user-scoped because its PATH holds ``AJXP_USER``.
STOCK_WORKSPACES = (
    BuiltinWorkspace(id="0", slug="default", path="AJXP_DATA_PATH/files", recycle_bin="recycle_bin", syncable=True),
    BuiltinWorkspace(
        id="1", slug="my-files", path="AJXP_DATA_PATH/personal/AJXP_USER", recycle_bin="recycle_bin", syncable=True
    ),
)


def builtin_workspaces(raw) -> tuple[BuiltinWorkspace, ...]:
    """The ``[[builtin_workspaces]]`` tables of the file, checked."""
    if not isinstance(raw, list):
        raise ConfigError(f"setting {WORKSPACES_SECTION}: expected an array of tables ([[{WORKSPACES_SECTION}]])")
    known = {f.name for f in dataclasses.fields(BuiltinWorkspace)}
    result = []
    for index, entry in enumerate(raw):
        where = f"{WORKSPACES_SECTION}[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"setting {where}: expected a table")
        unknown = set(entry) - known
        if unknown:
            raise ConfigError(f"setting {where}.{sorted(unknown)[0]}: unknown key")
        for key in ("id", "slug"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise ConfigError(f"setting {where}.{key}: required, a non-empty string")
        if "syncable" in entry and not isinstance(entry["syncable"], bool):
            raise ConfigError(f"setting {where}.syncable: expected true or false")
        for key in ("path", "container", "access_type", "recycle_bin"):
            if key in entry and not isinstance(entry[key], str):
                raise ConfigError(f"setting {where}.{key}: expected a string")
        result.append(BuiltinWorkspace(**entry))
    return tuple(result)
