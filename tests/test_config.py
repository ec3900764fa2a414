"""The configuration: every error branch names its setting, the example and the docs match the declarations."""

from __future__ import annotations

import builtins
import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from shim import config
from shim.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
BASE = {"PYDIO_SHIM_UPSTREAM_URL": "http://127.0.0.1:8000", "PYDIO_SHIM_DATABASE_URL": "sqlite:////tmp/pydio.db"}


def load_text(tmp_path, text: str, environ=None) -> config.Config:
    path = tmp_path / "shim.toml"
    path.write_text(text)
    return config.load(str(path), environ=dict(environ if environ is not None else BASE))


def error(tmp_path, text: str, environ=None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text, environ)
    message = str(caught.value)
    assert "\n" not in message, "an error is one line"
    return message


# --- the file --------------------------------------------------------------------------------------


def test_file_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="configuration file /nonexistent/shim.toml: not found"):
        config.load("/nonexistent/shim.toml", environ={})
    with pytest.raises(ConfigError, match="is a directory"):
        config.load(str(tmp_path), environ={})
    assert "not valid TOML" in error(tmp_path, "[upstream\nurl = 1")

    real_open = builtins.open

    def refusing_open(path, *args, **kwargs):
        if str(path).endswith("locked.toml"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    with pytest.raises(ConfigError, match="not readable by this user"):
        config.load(str(tmp_path / "locked.toml"), environ={})


def test_the_file_comes_from_pydio_shim_config(tmp_path):
    path = tmp_path / "shim.toml"
    path.write_text('[upstream]\nurl = "http://legacy:8081"\n[database]\nurl = "sqlite:////tmp/x.db"\n')
    loaded = config.load(environ={"PYDIO_SHIM_CONFIG": str(path)})
    assert loaded.upstream_url == "http://legacy:8081"


def test_settings_of_earlier_versions_say_what_replaced_them(tmp_path):
    assert error(tmp_path, "[auth]\ncache_ttl = 30") == (
        "setting auth.cache_ttl: replaced by auth.max_age: a decision now lasts while the rows it depends on "
        "are unchanged; remove it"
    )
    assert error(tmp_path, "[workspaces]\ncache_ttl = 10").startswith(
        "setting workspaces.cache_ttl: replaced by auth.max_age"
    )
    assert error(tmp_path, "", {**BASE, "PYDIO_SHIM_AUTH_CACHE_TTL": "5"}).startswith(
        "setting PYDIO_SHIM_AUTH_CACHE_TTL: replaced by auth.max_age"
    )


def test_unknown_sections_and_settings(tmp_path):
    assert error(tmp_path, "[nope]\nx = 1") == "setting nope: unknown section"
    assert error(tmp_path, 'upstream = "x"') == "setting upstream: expected a table [upstream]"
    assert error(tmp_path, "[auth]\nttl = 3") == "setting auth.ttl: unknown setting"


@pytest.mark.parametrize(
    "text,expected",
    [
        ('[auth]\nmax_age = "soon"', "setting auth.max_age: expected a number, got 'soon'"),
        ("[auth]\nmax_age = true", "setting auth.max_age: expected a number, got True"),
        ("[auth]\nmax_age = -1", "setting auth.max_age: must not be negative, got -1"),
        ("[database]\npool_size = 2.5", "setting database.pool_size: expected a whole number, got 2.5"),
        ("[database]\npool_size = -3", "setting database.pool_size: must not be negative, got -3"),
        ("[log]\nlevel = 3", "setting log.level: expected a string, got 3"),
        ('[proxy]\ntrusted_proxies = "10.0.0.1"', None),  # a comma-separated string is accepted
        (
            "[proxy]\ntrusted_proxies = [1, 2]",
            "setting proxy.trusted_proxies: expected an array of strings, got [1, 2]",
        ),
    ],
)
def test_values_of_the_wrong_kind(tmp_path, text, expected):
    if expected is None:
        assert load_text(tmp_path, text).proxy_trusted_proxies == ("10.0.0.1",)
    else:
        assert error(tmp_path, text) == expected


def test_environment_overrides_win_and_are_named_in_errors(tmp_path):
    loaded = load_text(tmp_path, "[auth]\nmax_age = 5", {**BASE, "PYDIO_SHIM_AUTH_MAX_AGE": "7.5"})
    assert loaded.auth_max_age == 7.5
    assert (
        error(tmp_path, "", {**BASE, "PYDIO_SHIM_DATABASE_POOL_SIZE": "many"})
        == "setting PYDIO_SHIM_DATABASE_POOL_SIZE: expected a whole number, got 'many'"
    )
    assert error(tmp_path, "", {**BASE, "PYDIO_SHIM_LOG_LEVEL": "LOUD"}).startswith("setting PYDIO_SHIM_LOG_LEVEL:")
    assert load_text(
        tmp_path, "", {**BASE, "PYDIO_SHIM_PROXY_TRUSTED_PROXIES": "10.0.0.0/8, ::1"}
    ).proxy_trusted_proxies == ("10.0.0.0/8", "::1")


def test_required_settings(tmp_path):
    assert error(tmp_path, "", {}) == "setting upstream.url: required (or set PYDIO_SHIM_UPSTREAM_URL)"
    assert (
        error(tmp_path, "", {"PYDIO_SHIM_UPSTREAM_URL": "http://h"})
        == "setting database.url: required (or set PYDIO_SHIM_DATABASE_URL)"
    )


# --- single settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url,expected",
    [
        ("ftp://host", "expected http://host[:port][/path]"),
        ("http://", "expected http://host[:port][/path]"),
        ("http://host:port", "the port is not a number"),
        ("http://host/pydio?x=1", "no query or fragment allowed"),
    ],
)
def test_bad_upstream_urls(tmp_path, url, expected):
    message = error(tmp_path, "", {**BASE, "PYDIO_SHIM_UPSTREAM_URL": url})
    assert message.startswith("setting PYDIO_SHIM_UPSTREAM_URL:") and expected in message


def test_a_path_in_the_upstream_url_is_the_upstream_prefix(tmp_path):
    environ = {"PYDIO_SHIM_DATABASE_URL": BASE["PYDIO_SHIM_DATABASE_URL"]}
    loaded = load_text(tmp_path, '[upstream]\nurl = "http://legacy:8081/pydio/"', environ)
    assert (loaded.upstream_url, loaded.upstream_prefix) == ("http://legacy:8081", "/pydio")
    assert "Pydio installed at /pydio" in config.describe(loaded)
    same = load_text(tmp_path, '[upstream]\nurl = "http://legacy:8081/pydio"\nprefix = "/pydio/"', environ)
    assert same.upstream_prefix == "/pydio"
    message = error(tmp_path, '[upstream]\nurl = "http://legacy:8081/pydio"\nprefix = "/"', environ)
    assert message == (
        "setting upstream.prefix: / disagrees with the path /pydio of upstream.url; give the "
        "install's path in one place only"
    )


def test_fastcgi_needs_a_document_root(tmp_path):
    assert (
        error(tmp_path, "", {**BASE, "PYDIO_SHIM_UPSTREAM_URL": "fcgi://127.0.0.1:9000"})
        == "setting upstream.document_root: required with a FastCGI upstream (the Pydio install directory)"
    )
    loaded = load_text(
        tmp_path,
        "",
        {
            **BASE,
            "PYDIO_SHIM_UPSTREAM_URL": "unix:/run/php/fpm.sock",
            "PYDIO_SHIM_UPSTREAM_DOCUMENT_ROOT": "/var/www/pydio",
        },
    )
    assert loaded.upstream_is_fastcgi


def test_prefixes_have_one_canonical_form(tmp_path):
    assert load_text(tmp_path, '[upstream]\nprefix = "/"').upstream_prefix == ""
    assert load_text(tmp_path, '[upstream]\nprefix = "//a//b/"').upstream_prefix == "/a/b"
    assert load_text(tmp_path, '[public]\nprefix = "/"').public_prefix == ""
    assert load_text(tmp_path, '[public]\nprefix = ""').public_prefix is None  # from the request
    assert load_text(tmp_path, "").public_prefix is None
    assert (
        error(tmp_path, '[public]\nprefix = "pydio"')
        == "setting public.prefix: a path prefix must start with '/', got 'pydio'"
    )


@pytest.mark.parametrize(
    "url,expected",
    [
        ("not a url", "not an SQLAlchemy URL"),
        ("oracle://scott@db/orcl", "engine 'oracle' is not one Pydio supports"),
        (
            "mysql://root@127.0.0.1/pydio",
            "mysql:// needs the Python module MySQLdb, which is not installed; use mysql+pymysql://...",
        ),
        ("mysql+nosuchdriver://root@h/p", "SQLAlchemy has no driver 'mysql+nosuchdriver'; use mysql+pymysql://..."),
    ],
)
def test_bad_database_urls(tmp_path, url, expected):
    for name in ("PYDIO_SHIM_DATABASE_URL", "PYDIO_SHIM_DATABASE_FEED_URL"):
        message = error(tmp_path, "", {**BASE, name: url})
        assert message.startswith(f"setting {name}:") and expected in message, message


def test_networks_admin_paths_and_log_level(tmp_path):
    assert (
        error(tmp_path, '[proxy]\ntrusted_proxies = ["10.0.0.0/33"]')
        == "setting proxy.trusted_proxies: '10.0.0.0/33' is not an IP address or network"
    )
    assert (
        error(tmp_path, '[admin]\nhealth_path = "health"')
        == "setting admin.health_path: must start with '/' (or be empty to turn it off)"
    )
    assert load_text(tmp_path, '[admin]\nmetrics_path = ""').admin_metrics_path == ""
    assert (
        error(tmp_path, '[log]\nlevel = "chatty"')
        == "setting log.level: one of DEBUG, INFO, WARNING, ERROR, got 'chatty'"
    )
    assert load_text(tmp_path, '[log]\nlevel = "debug"').log_level == "DEBUG"


@pytest.mark.parametrize(
    "text,expected",
    [
        (
            'builtin_workspaces = "0"',
            "setting builtin_workspaces: expected an array of tables ([[builtin_workspaces]])",
        ),
        ("builtin_workspaces = [1]", "setting builtin_workspaces[0]: expected a table"),
        (
            '[[builtin_workspaces]]\nid = "0"\nslug = "d"\ncolour = "red"',
            "setting builtin_workspaces[0].colour: unknown key",
        ),
        ('[[builtin_workspaces]]\nslug = "d"', "setting builtin_workspaces[0].id: required, a non-empty string"),
        (
            '[[builtin_workspaces]]\nid = "0"\nslug = ""',
            "setting builtin_workspaces[0].slug: required, a non-empty string",
        ),
        (
            '[[builtin_workspaces]]\nid = "0"\nslug = "d"\nsyncable = "yes"',
            "setting builtin_workspaces[0].syncable: expected true or false",
        ),
        (
            '[[builtin_workspaces]]\nid = "0"\nslug = "d"\npath = 3',
            "setting builtin_workspaces[0].path: expected a string",
        ),
    ],
)
def test_builtin_workspace_errors(tmp_path, text, expected):
    assert error(tmp_path, text) == expected


def test_builtin_workspaces_replace_the_stock_ones(tmp_path):
    loaded = load_text(tmp_path, '[[builtin_workspaces]]\nid = "7"\nslug = "team"\nsyncable = true')
    assert loaded.workspaces == (config.BuiltinWorkspace(id="7", slug="team", syncable=True),)
    assert load_text(tmp_path, "").workspaces == config.STOCK_WORKSPACES


def test_check_config_prints_one_line_per_bad_setting(tmp_path):
    path = tmp_path / "shim.toml"
    path.write_text('[upstream]\nurl = "http://127.0.0.1:8000"\n[database]\nurl = "mysql://root@127.0.0.1/pydio"\n')
    result = subprocess.run(
        [sys.executable, "-m", "shim.cli", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "pydio-shim: setting database.url: mysql:// needs the Python module MySQLdb, which is not installed; "
        "use mysql+pymysql://... (installed with the shim)"
    ]


# --- the declarations, the example file, the docs ------------------------------------------------


def test_every_setting_is_declared_once_with_a_description():
    names = [s.name for s in config.SETTINGS]
    assert len(names) == len(set(names))
    assert all(s.description and s.description.endswith(".") for s in config.SETTINGS)
    assert {f.name for f in dataclasses.fields(config.Config)} == {s.field for s in config.SETTINGS} | {"workspaces"}


def test_example_configuration_has_every_setting_with_its_default():
    path = ROOT / "conf" / "shim.example.toml"
    data = tomllib.loads(path.read_text())
    written = {(section, key) for section, values in data.items() if section != "builtin_workspaces" for key in values}
    assert written == {(s.section, s.key) for s in config.SETTINGS}
    for s in config.SETTINGS:
        if s.required:
            continue
        value = data[s.section][s.key]
        value = tuple(value) if isinstance(value, list) else value
        canonical = s.check(s.name, value) if s.check else value
        assert canonical == s.default, f"{s.name}: the example says {value!r}, the default is {s.default!r}"
    for entry in data["builtin_workspaces"]:
        assert set(entry) == {f.name for f in dataclasses.fields(config.BuiltinWorkspace)}
    loaded = config.load(str(path), environ={})
    assert loaded.workspaces == config.STOCK_WORKSPACES
    text = path.read_text()
    for s in config.SETTINGS:
        # each setting has a comment just above it (or above its group)
        block = text.split(f"[{s.section}]", 1)[1].split(f"\n{s.key} =", 1)[0]
        assert "\n#" in block, f"{s.name} is not explained"


def test_docs_list_every_setting_as_declared():
    text = (ROOT / "docs" / "configuration.md").read_text()
    start, end = "<!-- settings: begin -->\n", "<!-- settings: end -->"
    assert start in text and end in text
    table = text.split(start, 1)[1].split(end, 1)[0]
    assert table == config.settings_table(), "docs/configuration.md: run `pydio-shim settings` and paste its table"


def test_server_bind(tmp_path):
    assert (
        error(tmp_path, '[server]\nbind = "localhost"')
        == "setting server.bind: expected host:port or unix:/path, got 'localhost'"
    )
    assert error(tmp_path, '[server]\nbind = "h:99999"').startswith("setting server.bind:")
    assert load_text(tmp_path, '[server]\nbind = "unix:/run/shim.sock"').server_bind == "unix:/run/shim.sock"
    loaded = load_text(tmp_path, '[server]\nbind = "0.0.0.0:9090"\n[public]\nprefix = "/pydio"')
    assert loaded.shim_url == "http://127.0.0.1:9090/pydio"
    assert load_text(tmp_path, '[server]\nbind = "10.1.2.3:8081"').shim_url == "http://10.1.2.3:8081"


def test_public_origin(tmp_path):
    assert (
        load_text(tmp_path, '[public]\norigin = "https://files.example.org/"').public_origin
        == "https://files.example.org"
    )
    for bad in ("files.example.org", "https://h/pydio", "ftp://h", "https://h?x"):
        assert error(tmp_path, f'[public]\norigin = "{bad}"').startswith("setting public.origin: expected")


def test_one_configuration_path_everywhere():
    """README, docs and examples name the configuration file at one place."""
    texts = {
        p: p.read_text()
        for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "conf").iterdir())]
        if p.is_file()
    }
    for path, text in texts.items():
        assert "/etc/pydio-shim.toml" not in text, f"{path.name} names another configuration path"
    assert config.DEFAULT_CONFIG_PATH == "/etc/pydio-shim/shim.toml"
    assert config.DEFAULT_CONFIG_PATH in texts[ROOT / "README.md"]
    assert config.DEFAULT_CONFIG_PATH in texts[ROOT / "conf" / "pydio-shim.service"]
