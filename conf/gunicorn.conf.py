"""gunicorn settings for pydio-shim in production.

    gunicorn -c conf/gunicorn.conf.py shim.wsgi:application
    (or: pydio-shim serve, which uses this file)

Settings named ``PYDIO_SHIM_*`` below come from the environment; the shim's own
configuration (``PYDIO_SHIM_CONFIG`` file and ``PYDIO_SHIM_*`` overrides) is read
here once, so a bad setting stops the start with one line naming it instead of
failing every worker on its first request.  Command-line options given to
gunicorn win over this file.
"""

import multiprocessing
import os
import sys

from shim import config as _shim_config

try:
    _config = _shim_config.load()
except _shim_config.ConfigError as _exc:
    sys.stderr.write(f"pydio-shim: {_exc}\n")
    raise SystemExit(2)

_cores = multiprocessing.cpu_count()

# --- listening ------------------------------------------------------------------------

bind = [os.environ.get("PYDIO_SHIM_BIND", "127.0.0.1:8080")]
# The process is managed with signals (systemd, pydio-shim serve); gunicorn's
# control socket lives at one per-user path that two instances would share.
control_socket_disable = True

# --- workers --------------------------------------------------------------------------
# The shim mostly waits: on the legacy server, on the database, on clients'
# uploads and downloads.  Threads carry that waiting cheaply (gthread), and a
# long transfer holds one thread for its whole duration, so there are many of
# them.  Processes are only needed for CPU (rendering the change feed holds the
# GIL): one per core.  "2 * cores + 1" is advice for *sync* workers, where a
# process is the unit of concurrency; with threads it would only multiply the
# per-process caches (authorization, workspaces) and database pools for nothing.
# At least two, so that a worker being recycled never leaves the port unserved.
worker_class = "gthread"
workers = int(os.environ.get("PYDIO_SHIM_WORKERS", max(2, _cores)))
threads = int(os.environ.get("PYDIO_SHIM_THREADS", 32))

# For gthread workers "timeout" is a heartbeat, not a request time limit: the
# worker's main loop reports to the master about once a second whatever its
# threads are doing, so a 2-hour download never trips it.  It only fires when
# the whole process is stuck (deadlock, a C call holding the GIL), and then
# every transfer of that worker dies with it: be patient.
timeout = 120
# On reload or stop, requests in flight get this long to finish; longer
# transfers are cut (the sync client resumes them).
graceful_timeout = 60
# Idle client connections are kept this long.  Above nginx's default upstream
# keepalive_timeout (60 s), so that nginx, not gunicorn, closes an idle
# connection: otherwise nginx may send a request on a connection gunicorn is
# closing at that very moment.  Idle connections wait in the worker's poller
# and hold no thread.
keepalive = 65

# Sync clients sign long URLs (deep UTF-8 paths percent-encoded, plus
# auth_token and auth_hash): allow request lines up to gunicorn's maximum.
limit_request_line = 8190

# Trust forwarding headers (X-Forwarded-Proto for wsgi.url_scheme) from exactly
# the proxies the shim trusts (proxy.trusted_proxies): a client that the shim
# does not trust must not be able to make gunicorn believe it came over TLS.
forwarded_allow_ips = ",".join(_config.proxy_trusted_proxies)

# --- logging --------------------------------------------------------------------------
# The shim writes its own access log ("shim.access": one line per request with
# the status, bytes, duration, kind and cache result), so gunicorn's is silenced.

loglevel = _config.log_level.lower()
accesslog = None
_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "shim": {
            "format": "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
            "datefmt": "%Y-%m-%d %H:%M:%S %z",
        },
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "shim", "stream": "ext://sys.stderr"},
        "null": {"class": "logging.NullHandler"},
    },
    "root": {"level": "WARNING", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": _config.log_level, "handlers": ["stderr"], "propagate": False,
                           "qualname": "gunicorn.error"},
        "gunicorn.access": {"level": "CRITICAL", "handlers": ["null"], "propagate": False,
                            "qualname": "gunicorn.access"},
        "shim": {"level": _config.log_level, "handlers": ["stderr"], "propagate": False},
        "shim.access": {"level": _config.log_level, "handlers": ["stderr"], "propagate": False},
    },
}


def post_fork(server, worker):
    """Configure each worker's logging.

    Done here rather than with ``logconfig_dict``: with that set, gunicorn
    formats its (silenced) access-log fields on every request, a few per cent
    of a feed poll's CPU.
    """
    import logging.config

    logging.config.dictConfig(_LOGGING)
