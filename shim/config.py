"""Configuration: every setting declared once, read from one TOML file plus ``PYDIO_SHIM_*`` overrides.

Each field of :class:`Config` is one setting, declared with :func:`setting`:
its TOML place (``[section] key``, from the field name ``section_key``), its
type (the annotation), its default and a one-line description.  From that one
declaration come the file format, the environment variable
(``PYDIO_SHIM_<SECTION>_<KEY>``), the validation, ``conf/shim.example.toml``
and the table of ``docs/configuration.md`` (both checked against it by a test).

A bad or missing value raises :class:`ConfigError` whose message names the
setting and says what is expected; the command line prints that one line and
exits, never a traceback.

Path prefixes have one canonical form, set here and nowhere else: ``""`` for
the root, ``"/a/b"`` otherwise (one leading slash, none trailing).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .config_values import (
    STOCK_WORKSPACES,
    WORKSPACES_SECTION,
    BuiltinWorkspace,
    ConfigError,
    builtin_workspaces,
    canonical_prefix,
    check_admin_path,
    check_bind,
    check_database_url,
    check_log_level,
    check_networks,
    check_optional_prefix,
    check_public_origin,
    check_upstream_url,
    coerce,
)

ENV_PREFIX = "PYDIO_SHIM_"
#: The one configuration path the documentation, the examples and the systemd unit use.
DEFAULT_CONFIG_PATH = "/etc/pydio-shim/shim.toml"


def setting(
    default: Any,
    description: str,
    *,
    required: bool = False,
    check: Callable[[str, Any], Any] | None = None,
    shown: str | None = None,
) -> Any:
    """Declare one setting as a :class:`Config` field (see the module docstring).

    *check(name, value)* validates a value and returns it in its canonical
    form; *shown* is how the default is written in the docs, when its
    canonical form would puzzle a reader (``"/"`` for the root prefix ``""``).
    """
    return dataclasses.field(
        default=default, metadata={"description": description, "required": required, "check": check, "shown": shown}
    )


def admin_endpoint(default: str, what: str) -> Any:
    """Declare the path of one of the shim's own endpoints (the same rule and wording for each)."""
    return setting(default, f"{what}, under the public prefix. Empty turns it off.", check=check_admin_path)


@dataclass(frozen=True)
class Config:
    """Every setting of the shim, validated.  Build one with :func:`load`."""

    upstream_url: str = setting(
        "",
        "The legacy Pydio server: http(s)://host[:port][/path] (its web server; a path is the install's "
        "prefix), or fcgi://host:port / unix:/path (PHP-FPM directly, with document_root).",
        required=True,
        check=check_upstream_url,
    )
    upstream_prefix: str = setting(
        "",
        "The path Pydio is installed at on that server (/ or e.g. /pydio); may differ from public.prefix.",
        check=canonical_prefix,
        shown='"/"',
    )
    upstream_document_root: str = setting(
        "", "With a FastCGI url: the Pydio install directory on the PHP-FPM host (where index.php is)."
    )
    upstream_connect_timeout: float = setting(5.0, "Seconds to wait for a connection to the legacy server.")
    upstream_read_timeout: float = setting(
        300.0, "Seconds to wait for each piece of an answer (not the whole answer: long downloads are fine)."
    )
    public_prefix: str | None = setting(
        None,
        "The path clients reach the shim at. Empty: from a trusted proxy's X-Forwarded-Prefix, else "
        "gunicorn's SCRIPT_NAME, else /.",
        check=check_optional_prefix,
    )
    public_origin: str = setting(
        "",
        "scheme://host[:port] clients reach the shim at, for rewritten URLs. Empty: from each request's "
        "Host (or a trusted X-Forwarded-Host), used only when it is a valid host name.",
        check=check_public_origin,
    )
    database_url: str = setting(
        "",
        "Pydio's own database, as an SQLAlchemy URL (mysql+pymysql://, postgresql+psycopg2://, "
        "sqlite:////path). Read only.",
        required=True,
        check=check_database_url,
    )
    database_feed_url: str = setting(
        "",
        "Where the change feed is read from, e.g. a read-only replica. Empty: database.url.",
        check=check_database_url,
    )
    database_connect_timeout: float = setting(
        5.0, "Seconds to wait for a new database connection, handshake included. 0: no limit."
    )
    database_read_timeout: float = setting(
        30.0, "Seconds to wait for the database: a read, a statement, a lock. 0: no limit (not advised)."
    )
    database_retry_interval: float = setting(
        5.0,
        "Seconds between attempts to read a database found out of reach (its feed requests are forwarded meanwhile).",
    )
    database_pool_size: int = setting(
        16, "Connections kept open per worker process and per database (as many again at busy moments)."
    )
    feed_refresh_interval: float = setting(
        0.15,
        "Seconds between two reads, per worker process, of what ajxp_changes holds lately; a poll with "
        "nothing new is answered from memory, as of a read that recent. 0 reads for every poll.",
    )
    auth_check_interval: float = setting(
        1.0,
        "Seconds between two checks, per worker process, whether a table the legacy decisions depend on "
        "changed; a change reaches every poll that starts that long after it.",
    )
    auth_max_age: float = setting(
        3600.0,
        "Seconds the legacy server's answer is kept at most, even with its rows unchanged (for settings kept "
        "in files). 0 asks every time.",
    )
    auth_watched_files: tuple[str, ...] = setting(
        (),
        "Files of the Pydio install whose changes count like a table's, when the shim can read them (e.g. "
        "data/plugins/boot.conf/bootstrap.json, data/cache/plugins_cache.ser). Empty: seen within auth.max_age.",
    )
    auth_deny_cache_ttl: float = setting(2.0, "Seconds a refusal of the legacy server is reused (at most 5).")
    auth_max_probes: int = setting(
        8,
        "Authorization requests one worker process sends the legacy server at once; beyond it, feed "
        "requests are forwarded.",
    )
    auth_cache_size: int = setting(
        10000,
        "Entries kept per worker process in the authorization and key-store caches (least recently used dropped).",
    )
    proxy_trusted_proxies: tuple[str, ...] = setting(
        ("127.0.0.1", "::1"),
        "Addresses or networks whose X-Forwarded-* headers are believed (the proxy in "
        "front of the shim). Also gunicorn's forwarded_allow_ips.",
        check=check_networks,
    )
    proxy_max_upstream_requests: int = setting(
        16,
        "Forwarded requests one worker process lets wait on the legacy server at once; beyond it, 503. Keeps "
        "threads for the feed (server.threads). 0: no bound.",
    )
    proxy_max_spooled_body: int = setting(
        256 * 1024 * 1024,
        "Bytes a chunked request body may have (it is spooled before forwarding); beyond it, 413. 0: no bound.",
    )
    proxy_spool_space: int = setting(
        1024 * 1024 * 1024,
        "Bytes all chunked bodies spooled at once by one worker may take; beyond it, 503. 0: no bound.",
    )
    proxy_spool_min_free: int = setting(
        1024 * 1024 * 1024,
        "Bytes left free on the spool's file system: an upload that would take more gets 503. 0: no check.",
    )
    proxy_spool_dir: str = setting("", "Where chunked bodies are spooled. Empty: the system's temporary directory.")
    admin_health_path: str = admin_endpoint("/_shim/health", "The health endpoint (JSON, 200 or 503)")
    admin_metrics_path: str = admin_endpoint("/_shim/metrics", "The Prometheus metrics endpoint")
    server_bind: str = setting(
        "127.0.0.1:8080", "Where pydio-shim serve listens: host:port or unix:/path (--bind wins).", check=check_bind
    )
    server_workers: int = setting(0, "gunicorn worker processes; 0: one per core, at least 2.")
    server_threads: int = setting(32, "Threads per worker process (each carries one request at a time).")
    server_header_timeout: float = setting(
        20.0,
        "Seconds a client has to send a request's whole header block; slower ones are disconnected "
        "(no thread waits for them).",
    )
    server_client_timeout: float = setting(
        60.0, "Seconds a request body may go without a byte before the request is dropped."
    )
    metrics_multiprocess_dir: str = setting(
        "", "Where the workers of one server share their metrics. Empty: a new temporary directory per start."
    )
    log_level: str = setting(
        "INFO", "DEBUG, INFO (one access line per request), WARNING or ERROR.", check=check_log_level
    )
    workspaces: tuple[BuiltinWorkspace, ...] = dataclasses.field(
        default=STOCK_WORKSPACES,
        metadata={
            "description": "The built-in workspaces Pydio defines in PHP ([[builtin_workspaces]] tables).",
            "required": False,
            "check": None,
            "shown": None,
        },
    )

    @property
    def upstream_is_fastcgi(self) -> bool:
        return self.upstream_url.startswith(("fcgi://", "unix:"))

    @property
    def feed_is_replica(self) -> bool:
        return bool(self.database_feed_url)

    @property
    def shim_url(self) -> str:
        """The shim's own URL as seen from this machine (from ``server.bind``), public prefix included."""
        host, _, port = self.server_bind.rpartition(":")
        if self.server_bind.startswith(("unix:", "fd://")) or host in ("0.0.0.0", "::", "[::]", ""):
            host = "127.0.0.1"
        return f"http://{host}:{port or 8080}{self.public_prefix or ''}"


#: The field holding the [[builtin_workspaces]] array: it is not a ``section.key`` setting.
WORKSPACES_FIELD = "workspaces"


@dataclass(frozen=True)
class Setting:
    """One ``[section] key`` of the file, as declared on :class:`Config`."""

    field: str
    section: str
    key: str
    kind: str  # "str", "float", "int", "bool", "list"
    default: Any
    description: str
    required: bool
    check: Callable[[str, Any], Any] | None
    shown: str | None

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section}_{self.key}".upper()


def _kind(annotation) -> str:
    if annotation in (str, str | None):
        return "str"
    if annotation is float:
        return "float"
    if annotation is int:
        return "int"
    if annotation is bool:
        return "bool"
    if annotation == tuple[str, ...]:
        return "list"
    raise TypeError(f"no setting kind for {annotation!r}")


def _declared() -> tuple[Setting, ...]:
    hints = typing.get_type_hints(Config)
    out = []
    for f in dataclasses.fields(Config):
        if f.name == WORKSPACES_FIELD:
            continue
        section, key = f.name.split("_", 1)
        out.append(
            Setting(
                f.name,
                section,
                key,
                _kind(hints[f.name]),
                f.default,
                f.metadata["description"],
                f.metadata["required"],
                f.metadata["check"],
                f.metadata["shown"],
            )
        )
    return tuple(out)


#: Every ``section.key`` setting, in declaration order.
SETTINGS: tuple[Setting, ...] = _declared()
_BY_PLACE = {(s.section, s.key): s for s in SETTINGS}


def _read_file(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path}: not found") from None
    except IsADirectoryError:
        raise ConfigError(f"configuration file {path}: is a directory") from None
    except PermissionError:
        raise ConfigError(f"configuration file {path}: not readable by this user") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path}: not valid TOML ({exc})") from None


#: Settings of earlier versions, and what took their place.
REPLACED = {
    "auth.cache_ttl": "auth.max_age: a decision now lasts while the rows it depends on are unchanged",
    "workspaces.cache_ttl": "auth.max_age: a workspace is read again as soon as its rows change",
}


def _replaced(name: str, where: str) -> ConfigError:
    return ConfigError(f"setting {where}: replaced by {REPLACED[name]}; remove it")


def _from_file(data: dict) -> tuple[dict, dict[str, str]]:
    """``(field values, field -> setting name)`` from the parsed file."""
    values: dict = {}
    names: dict[str, str] = {}
    sections = {s.section for s in SETTINGS}
    for section, content in data.items():
        if section == WORKSPACES_SECTION:
            values[WORKSPACES_FIELD] = builtin_workspaces(content)
            continue
        for key in content if isinstance(content, dict) else ():
            if f"{section}.{key}" in REPLACED:
                raise _replaced(f"{section}.{key}", f"{section}.{key}")
        if section not in sections:
            raise ConfigError(f"setting {section}: unknown section")
        if not isinstance(content, dict):
            raise ConfigError(f"setting {section}: expected a table [{section}]")
        for key, value in content.items():
            s = _BY_PLACE.get((section, key))
            if s is None:
                raise ConfigError(f"setting {section}.{key}: unknown setting")
            values[s.field] = coerce(s.name, s.kind, value)
            names[s.field] = s.name
    return values, names


def load(path: str | None = None, environ: typing.Mapping[str, str] | None = None) -> Config:
    """Read the TOML file at *path* (optional), apply environment overrides, validate.

    *path* defaults to ``$PYDIO_SHIM_CONFIG``; with neither, only the environment
    is used.  Raises :class:`ConfigError` naming the first bad setting.
    """
    environ = os.environ if environ is None else environ
    path = path or environ.get(ENV_PREFIX + "CONFIG") or None
    values, names = _from_file(_read_file(path)) if path else ({}, {})
    for name in REPLACED:
        env = ENV_PREFIX + name.replace(".", "_").upper()
        if env in environ:
            raise _replaced(name, env)
    for s in SETTINGS:
        if s.env in environ:
            values[s.field] = coerce(s.env, s.kind, environ[s.env])
            names[s.field] = s.env
    for s in SETTINGS:
        name = names.get(s.field, s.name)
        if s.required and not values.get(s.field):
            raise ConfigError(f"setting {s.name}: required (or set {s.env})")
        if s.check is not None and s.field in values:
            values[s.field] = s.check(name, values[s.field])
    _upstream_path_as_prefix(values, names)
    if values["upstream_url"].startswith(("fcgi://", "unix:")) and not values.get("upstream_document_root"):
        raise ConfigError(
            "setting upstream.document_root: required with a FastCGI upstream (the Pydio install directory)"
        )
    return Config(**values)


def _upstream_path_as_prefix(values: dict, names: dict) -> None:
    """A path in an HTTP ``upstream.url`` is the upstream prefix (it must agree with ``upstream.prefix``)."""
    url = values["upstream_url"]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return
    path = canonical_prefix("upstream.url", parts.path or "/")
    values["upstream_url"] = f"{parts.scheme}://{parts.netloc}"
    if not path:
        return
    if "upstream_prefix" in values and values["upstream_prefix"] != path:
        raise ConfigError(
            f"setting {names.get('upstream_prefix', 'upstream.prefix')}: "
            f"{values['upstream_prefix'] or '/'} disagrees with the path {path} of upstream.url; "
            "give the install's path in one place only"
        )
    values["upstream_prefix"] = path


def replace(config: Config, **changes) -> Config:
    """A copy of *config* with some fields changed (tests and the demo use it)."""
    return dataclasses.replace(config, **changes)


def _shown(value) -> str:
    if value is None or value == "":
        return '""'
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def settings_table() -> str:
    """Every setting as a Markdown table (the one in ``docs/configuration.md``, checked by a test)."""
    lines = ["| setting | environment variable | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = "(required)" if s.required else (s.shown or _shown(s.default))
        lines.append(f"| `{s.name}` | `{s.env}` | {default} | {s.description} |")
    return "\n".join(lines) + "\n"


def describe(config: Config) -> str:
    """One line saying what the configuration amounts to (``check-config``)."""
    upstream = config.upstream_url + (config.upstream_prefix if not config.upstream_is_fastcgi else "")
    public = "from the request" if config.public_prefix is None else (config.public_prefix or "/")
    return (
        f"upstream {upstream} (Pydio installed at {config.upstream_prefix or '/'}), public prefix {public}, "
        f"{len(config.workspaces)} built-in workspace(s)"
    )
