"""The ``pydio-shim`` command line.

    pydio-shim serve   [--config FILE] [--bind ADDR] [--gunicorn-config FILE]
    pydio-shim demo    [--port N] [--prefix /pydio]
    pydio-shim check-config [--config FILE]

Every command reads the configuration file named by ``--config`` or
``PYDIO_SHIM_CONFIG`` plus ``PYDIO_SHIM_*`` variables; a bad setting is reported
in one line naming it, with exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import __version__
from . import config as config_module

EXIT_CONFIG = 2


def _load_config(args):
    try:
        return config_module.load(getattr(args, "config", None))
    except config_module.ConfigError as exc:
        print(f"pydio-shim: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)


def default_gunicorn_config() -> str | None:
    """``conf/gunicorn.conf.py`` of a source checkout, if there is one."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidate = os.path.join(here, "conf", "gunicorn.conf.py")
    return candidate if os.path.exists(candidate) else None


def cmd_serve(args) -> int:
    config = _load_config(args)  # fail fast, before gunicorn forks workers
    if args.config:
        os.environ["PYDIO_SHIM_CONFIG"] = os.path.abspath(args.config)
    argv = [sys.executable, "-m", "gunicorn"]
    gconf = args.gunicorn_config or default_gunicorn_config()
    if gconf:
        argv += ["-c", gconf]
    if args.bind:
        argv += ["--bind", args.bind]
    argv += ["--log-level", config.log_level.lower(), "shim.wsgi:application"]
    os.execv(sys.executable, argv)
    return 0  # not reached


def cmd_check_config(args) -> int:
    config = _load_config(args)
    print(f"configuration ok: upstream {config.upstream_url} (prefix {config.upstream_prefix}), "
          f"public prefix {config.public_prefix or 'from the request'}, "
          f"{len(config.workspaces)} built-in workspaces")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(port=args.port, prefix=args.prefix, workdir=args.workdir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pydio-shim", description="A fast front for a legacy Pydio 8 server.")
    parser.add_argument("--version", action="version", version=f"pydio-shim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    serve = sub.add_parser("serve", help="run the shim under gunicorn")
    serve.add_argument("--config", help="configuration file (TOML)")
    serve.add_argument("--bind", help="address to listen on, e.g. 127.0.0.1:8080 or unix:/run/shim.sock")
    serve.add_argument("--gunicorn-config", help="gunicorn configuration file (default: conf/gunicorn.conf.py)")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate the configuration and print a summary")
    check.add_argument("--config", help="configuration file (TOML)")
    check.set_defaults(func=cmd_check_config)

    demo = sub.add_parser("demo", help="run SQLite + a stand-in legacy server + the shim, with example commands")
    demo.add_argument("--port", type=int, default=0, help="port of the shim (default: a free one)")
    demo.add_argument("--prefix", default="", help="serve the stand-in legacy server under this subpath")
    demo.add_argument("--workdir", help="where the demo keeps its database and files (default: a temp dir)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
