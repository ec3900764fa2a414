"""Configuration: one TOML file plus ``PYDIO_SHIM_*`` environment overrides.

The file is read with the standard library (:mod:`tomllib`).  Every setting has a
default except the upstream and the database, which an install must name.  Any
setting can be overridden from the environment as ``PYDIO_SHIM_<SECTION>_<KEY>``
(for instance ``PYDIO_SHIM_DATABASE_URL`` or ``PYDIO_SHIM_AUTH_CACHE_TTL``).

A bad or missing value raises :class:`ConfigError` whose message names the
setting; the command line prints that one line and exits, never a traceback.
See ``conf/shim.example.toml`` for every setting with its meaning.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from urllib.parse import urlsplit

ENV_PREFIX = "PYDIO_SHIM_"


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names it."""


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


#: The stock built-in workspaces of a Pydio 8 install (shared/spec: ids 0 and 1).
#: ``my-files`` is user-scoped because its PATH holds ``AJXP_USER``.
STOCK_WORKSPACES = (
    BuiltinWorkspace(id="0", slug="default", path="AJXP_DATA_PATH/files",
                     recycle_bin="recycle_bin", syncable=True),
    BuiltinWorkspace(id="1", slug="my-files", path="AJXP_DATA_PATH/personal/AJXP_USER",
                     recycle_bin="recycle_bin", syncable=True),
)


@dataclass(frozen=True)
class Config:
    """Every setting of the shim, validated.  Build one with :func:`load`."""

    upstream_url: str
    database_url: str
    upstream_prefix: str = "/"
    upstream_document_root: str = ""
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 300.0
    public_prefix: str = ""
    feed_database_url: str = ""
    database_pool_size: int = 16
    auth_cache_ttl: float = 30.0
    auth_deny_cache_ttl: float = 2.0
    auth_cache_size: int = 10000
    workspace_cache_ttl: float = 10.0
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    health_path: str = "/_shim/health"
    metrics_path: str = "/_shim/metrics"
    log_level: str = "INFO"
    workspaces: tuple[BuiltinWorkspace, ...] = STOCK_WORKSPACES

    @property
    def upstream_is_fastcgi(self) -> bool:
        return self.upstream_url.startswith(("fcgi://", "unix:"))


# Where each flat setting lives in the TOML file: (section, key) -> field name.
_LAYOUT = {
    ("upstream", "url"): "upstream_url",
    ("upstream", "prefix"): "upstream_prefix",
    ("upstream", "document_root"): "upstream_document_root",
    ("upstream", "connect_timeout"): "upstream_connect_timeout",
    ("upstream", "read_timeout"): "upstream_read_timeout",
    ("public", "prefix"): "public_prefix",
    ("database", "url"): "database_url",
    ("database", "feed_url"): "feed_database_url",
    ("database", "pool_size"): "database_pool_size",
    ("auth", "cache_ttl"): "auth_cache_ttl",
    ("auth", "deny_cache_ttl"): "auth_deny_cache_ttl",
    ("auth", "cache_size"): "auth_cache_size",
    ("workspaces", "cache_ttl"): "workspace_cache_ttl",
    ("proxy", "trusted_proxies"): "trusted_proxies",
    ("admin", "health_path"): "health_path",
    ("admin", "metrics_path"): "metrics_path",
    ("log", "level"): "log_level",
}

_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(Config)}


def _setting_name(section: str, key: str) -> str:
    return f"{section}.{key}"


def _coerce(name: str, field_name: str, value):
    """Convert a TOML or environment value to the field's type, or raise."""
    kind = _FIELD_TYPES[field_name]
    try:
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if number < 0:
                raise ConfigError(f"setting {name}: must not be negative, got {value!r}")
            return number
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            number = int(value)
            if number < 0:
                raise ConfigError(f"setting {name}: must not be negative, got {value!r}")
            return number
        if kind == "tuple[str, ...]":
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return tuple(value)
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name}: expected {kind.split('[')[0]}, got {value!r}") from None


def _normalise_prefix(name: str, value: str, allow_empty: bool) -> str:
    if value == "" and allow_empty:
        return ""
    if not value.startswith("/"):
        raise ConfigError(f"setting {name}: a path prefix must start with '/', got {value!r}")
    return "/" + value.strip("/") if value.strip("/") else "/"


def _workspaces(raw) -> tuple[BuiltinWorkspace, ...]:
    if not isinstance(raw, list):
        raise ConfigError("setting builtin_workspaces: expected an array of tables ([[builtin_workspaces]])")
    known = {f.name for f in dataclasses.fields(BuiltinWorkspace)}
    result = []
    for index, entry in enumerate(raw):
        where = f"builtin_workspaces[{index}]"
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


def _check_database_url(setting: str, url: str) -> None:
    """Refuse a database URL SQLAlchemy cannot parse or whose engine Pydio does not use."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError
    example = "mysql+pymysql://user:pw@host/db, postgresql+psycopg2://..., sqlite:////path/pydio.db"
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        raise ConfigError(f"setting {setting}: not an SQLAlchemy URL (expected e.g. {example})") from None
    if backend not in ("mysql", "postgresql", "sqlite"):
        raise ConfigError(f"setting {setting}: engine {backend!r} is not one Pydio supports (mysql, postgresql, sqlite)")


def load(path: str | None = None, environ: dict | None = None) -> Config:
    """Read the TOML file at *path* (optional), apply environment overrides.

    *path* defaults to ``$PYDIO_SHIM_CONFIG``; with neither, only the environment
    is used.  Raises :class:`ConfigError` naming the first bad setting.
    """
    environ = os.environ if environ is None else environ
    path = path or environ.get(ENV_PREFIX + "CONFIG") or None
    data: dict = {}
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path}: not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {path}: not valid TOML ({exc})") from None

    values: dict = {}
    known_sections = {s for s, _ in _LAYOUT} | {"builtin_workspaces"}
    for section, content in data.items():
        if section not in known_sections:
            raise ConfigError(f"setting {section}: unknown section")
        if section == "builtin_workspaces":
            values["workspaces"] = _workspaces(content)
            continue
        if not isinstance(content, dict):
            raise ConfigError(f"setting {section}: expected a table [{section}]")
        for key, value in content.items():
            if (section, key) not in _LAYOUT:
                raise ConfigError(f"setting {_setting_name(section, key)}: unknown setting")
            field_name = _LAYOUT[(section, key)]
            values[field_name] = _coerce(_setting_name(section, key), field_name, value)

    for (section, key), field_name in _LAYOUT.items():
        env_name = f"{ENV_PREFIX}{section}_{key}".upper()
        if env_name in environ:
            values[field_name] = _coerce(env_name, field_name, environ[env_name])

    for field_name, setting in (("upstream_url", "upstream.url"), ("database_url", "database.url")):
        if not values.get(field_name):
            raise ConfigError(f"setting {setting}: required (or set {ENV_PREFIX}{setting.replace('.', '_').upper()})")

    upstream = values["upstream_url"]
    scheme = urlsplit(upstream).scheme
    if scheme not in ("http", "https", "fcgi", "unix") or (scheme in ("http", "https") and not urlsplit(upstream).hostname):
        raise ConfigError(f"setting upstream.url: expected http://host[:port], https://..., fcgi://host:port or unix:/path, got {upstream!r}")
    if scheme in ("fcgi", "unix") and not values.get("upstream_document_root"):
        raise ConfigError("setting upstream.document_root: required with a FastCGI upstream (the Pydio install directory)")
    for field_name, setting in (("database_url", "database.url"), ("feed_database_url", "database.feed_url")):
        if values.get(field_name):
            _check_database_url(setting, values[field_name])

    values["upstream_prefix"] = _normalise_prefix("upstream.prefix", values.get("upstream_prefix", "/"), False)
    values["public_prefix"] = _normalise_prefix("public.prefix", values.get("public_prefix", ""), True)
    for name, setting in (("health_path", "admin.health_path"), ("metrics_path", "admin.metrics_path")):
        if name in values and values[name] and not values[name].startswith("/"):
            raise ConfigError(f"setting {setting}: must start with '/' (or be empty to turn it off)")
    if values.get("log_level", "INFO").upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"setting log.level: one of DEBUG, INFO, WARNING, ERROR, got {values['log_level']!r}")
    values["log_level"] = values.get("log_level", "INFO").upper()
    return Config(**values)


def replace(config: Config, **changes) -> Config:
    """A copy of *config* with some fields changed (tests and the demo use it)."""
    return dataclasses.replace(config, **changes)
