"""The ``pydio-shim`` command line.

    pydio-shim serve   [--config FILE] [--bind ADDR] [--gunicorn-config FILE]
    pydio-shim demo    [--port N] [--prefix /pydio]
    pydio-shim check-config [--config FILE]
    pydio-shim doctor  [--config FILE] [--user LOGIN [--password PW]] [--workspace WS]
                       [--shim-url URL] [--timeout S] [--json]
    pydio-shim install-schema [--config FILE] [--dry-run] [--with-index]

Every command reads the configuration file named by ``--config`` or
``PYDIO_SHIM_CONFIG`` plus ``PYDIO_SHIM_*`` variables; a bad setting is reported
in one line naming it, with exit status 2.  ``doctor`` exits with 0 when no
check failed (warnings allowed), 1 otherwise; ``install-schema`` with 1 when the
database refuses a statement.
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
        raise SystemExit(EXIT_CONFIG) from None


#: The gunicorn configuration shipped in the package (``shim/gunicorn_conf.py``).
PACKAGED_GUNICORN_CONFIG = "python:shim.gunicorn_conf"


def cmd_serve(args) -> int:
    config = _load_config(args)  # fail fast, before gunicorn forks workers
    if args.config:
        os.environ["PYDIO_SHIM_CONFIG"] = os.path.abspath(args.config)
    argv = [sys.executable, "-m", "gunicorn"]
    argv += ["-c", args.gunicorn_config or PACKAGED_GUNICORN_CONFIG]
    if args.bind:
        argv += ["--bind", args.bind]
    argv += ["--log-level", config.log_level.lower(), "shim.wsgi:application"]
    os.execv(sys.executable, argv)
    return 0  # not reached


def cmd_check_config(args) -> int:
    config = _load_config(args)
    print(f"configuration ok: {config_module.describe(config)}")
    return 0


def cmd_settings(args) -> int:
    print(config_module.settings_table(), end="")
    return 0


def cmd_demo(args) -> int:
    from .demo.stack import run_demo

    return run_demo(port=args.port, prefix=args.prefix, workdir=args.workdir)


DOCTOR_PASSWORD_ENV = "PYDIO_SHIM_DOCTOR_PASSWORD"


def cmd_doctor(args) -> int:
    from . import doctor

    config = _load_config(args)
    if args.password is not None and not args.user:
        print("pydio-shim doctor: --password needs --user", file=sys.stderr)
        return EXIT_CONFIG
    password = args.password if args.password is not None else os.environ.get(DOCTOR_PASSWORD_ENV)
    if args.user and password is None:
        if not sys.stdin.isatty():
            print(f"pydio-shim doctor: --user needs a password: --password, or {DOCTOR_PASSWORD_ENV}", file=sys.stderr)
            return EXIT_CONFIG
        import getpass

        password = getpass.getpass(f"password of {args.user}: ")
    try:
        shim_url = doctor.check_url(args.shim_url) if args.shim_url else None
    except ValueError as exc:
        print(f"pydio-shim doctor: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    progress = None if args.json else doctor.Progress(sys.stderr)

    def report(finding):
        if progress is not None:
            progress.done(finding)
            print(finding.line(), flush=True)

    context = doctor.Context(
        config,
        config_path=args.config,
        login=args.user,
        password=password if args.user else None,
        workspace_arg=args.workspace,
        shim_url=(shim_url or config.shim_url).rstrip("/"),
        timeout=args.timeout,
    )
    findings = doctor.run(context, progress=progress.start if progress else None, report=report)
    if args.json:
        print(doctor.as_json(findings))
    else:
        print(doctor.summary(findings))
    return doctor.exit_status(findings)


def cmd_install_schema(args) -> int:
    import sqlalchemy as sa

    from . import db, dbcheck, schema

    config = _load_config(args)
    missing_file = dbcheck.sqlite_file_problem(config.database_url)
    if missing_file:
        print(f"pydio-shim install-schema: {missing_file}", file=sys.stderr)
        return 1
    print(f"-- database {dbcheck.masked_url(config.database_url)}")
    # A plain engine: nothing is set on the database as a side effect (no SQLite
    # journal mode), so that --dry-run really changes nothing.
    engine = dbcheck.connect_engine(config.database_url, timeout=10)
    try:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError as exc:
            seen, fix = dbcheck.describe_db_error(exc, config.database_url)
            print(f"pydio-shim install-schema: cannot connect: {seen}\n  fix: {fix}", file=sys.stderr)
            return 1
        try:
            schema.install(
                engine, with_index=args.with_index, dry_run=args.dry_run, out=lambda line: print(line, flush=True)
            )
        except sa.exc.SQLAlchemyError as exc:
            reason = db.first_line(exc)
            print(
                f"pydio-shim install-schema: the database refused a statement: {reason}\n  fix: the user of "
                "database.url needs the CREATE, INDEX and TRIGGER privileges (MySQL with binary logging also "
                "SUPER, or log_bin_trust_function_creators = 1); what ran before stays, run it again once fixed",
                file=sys.stderr,
            )
            return 1
    finally:
        engine.dispose()
    return 0


def _add_doctor(sub) -> None:
    """The ``doctor`` subcommand and its options."""
    doctor = sub.add_parser(
        "doctor",
        help="check upstream, database, triggers, workspaces and the shim, end to end",
        description="Run every check and print one line each: ok, warning, failed or skipped, "
        "what was seen and how to fix it. Exit status 0 when no check failed.",
    )
    doctor.add_argument("--config", help="configuration file (TOML)")
    doctor.add_argument(
        "--user",
        metavar="LOGIN",
        help="a test account: checks the Authorization header and, end "
        "to end, creates and deletes a test file through the shim",
    )
    doctor.add_argument(
        "--password", metavar="PW", help=f"its password (better: set {DOCTOR_PASSWORD_ENV}; asked for on a terminal)"
    )
    doctor.add_argument(
        "--workspace",
        metavar="WS",
        help="check only this workspace (id or slug), and use it for "
        "the account checks (default: a syncable built-in one)",
    )
    doctor.add_argument(
        "--shim-url",
        metavar="URL",
        help="the shim's public URL, prefix included (default: from server.bind, + public.prefix)",
    )
    doctor.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for each answer (default 10)"
    )
    doctor.add_argument("--json", action="store_true", help="print the findings as a JSON list, no progress")
    doctor.set_defaults(func=cmd_doctor)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pydio-shim", description="A fast front for a legacy Pydio 8 server.")
    parser.add_argument("--version", action="version", version=f"pydio-shim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    serve = sub.add_parser("serve", help="run the shim under gunicorn")
    serve.add_argument("--config", help="configuration file (TOML)")
    serve.add_argument("--bind", help="address to listen on, e.g. 127.0.0.1:8080 or unix:/run/shim.sock")
    serve.add_argument(
        "--gunicorn-config", help="gunicorn configuration file (default: the one shipped in the package)"
    )
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate the configuration and print a summary")
    check.add_argument("--config", help="configuration file (TOML)")
    check.set_defaults(func=cmd_check_config)

    _add_doctor(sub)

    install = sub.add_parser(
        "install-schema",
        help="create the missing meta.syncable tables and triggers",
        description="Create what is missing of ajxp_changes, ajxp_index and their triggers "
        "(MySQL/MariaDB, PostgreSQL, SQLite). Never alters or drops anything; "
        "a second run does nothing.",
    )
    install.add_argument("--config", help="configuration file (TOML)")
    install.add_argument("--dry-run", action="store_true", help="print the statements, change nothing")
    install.add_argument(
        "--with-index",
        action="store_true",
        help="also index ajxp_changes (repository_identifier, "
        "seq) for fast polls, showing the feed query's "
        "plan before and after",
    )
    install.set_defaults(func=cmd_install_schema)

    settings = sub.add_parser("settings", help="list every setting with its default (Markdown)")
    settings.set_defaults(func=cmd_settings)

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
