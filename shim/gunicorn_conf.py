"""The gunicorn configuration of pydio-shim, shipped inside the package.

``pydio-shim serve`` runs ``gunicorn -c python:shim.gunicorn_conf`` whatever is
installed where; ``conf/gunicorn.conf.py`` only imports this module, for those
who run gunicorn themselves.  The shim's own configuration (``PYDIO_SHIM_CONFIG``
and ``PYDIO_SHIM_*``) is read here once, so a bad setting stops the start with
one line naming it instead of failing every worker on its first request.
Options given to gunicorn on its command line win over this module.
"""

import multiprocessing
import os
import shutil
import sys
import tempfile

from shim import config as _shim_config
from shim.accesslog import LOG_DATE_FORMAT, LOG_FORMAT, loggable_method
from shim.balance import ConnectionCounts
from shim.gunicorn_worker import ShimThreadWorker

try:
    _config = _shim_config.load()
except _shim_config.ConfigError as _exc:
    sys.stderr.write(f"pydio-shim: {_exc}\n")
    raise SystemExit(2) from None

# --- listening ------------------------------------------------------------------------

bind = [_config.server_bind]
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
# gthread, with the request headers gathered by the event loop within a deadline
# and body reads bounded (shim/gunicorn_worker.py): slow clients hold no thread.
worker_class = "shim.gunicorn_worker.ShimThreadWorker"
# gunicorn's own parser whatever is installed: the log masking (shim.accesslog)
# knows the words of its refusals; the optional C parser (gunicorn_h1c) has others.
http_parser = "python"
ShimThreadWorker.header_timeout = _config.server_header_timeout
ShimThreadWorker.client_timeout = _config.server_client_timeout
workers = _config.server_workers or max(2, multiprocessing.cpu_count())
threads = _config.server_threads
# New connections go to the worker holding the fewest (shim/balance.py): a burst
# of kept-alive connections would otherwise often land on one worker, one core.
_connection_counts = ConnectionCounts()


def pre_fork(server, worker):
    worker.connection_counts = _connection_counts
    worker.connection_slot = _connection_counts.claim()


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

# --- metrics shared by the workers ----------------------------------------------------
# prometheus_client's multiprocess mode: each worker writes its values to files
# in one directory, and whichever worker answers /_shim/metrics adds them all
# up, so counters never jump between workers.  The variable must be set before
# a worker imports prometheus_client, that is here, in the master.
_own_metrics_dir = not _config.metrics_multiprocess_dir
_metrics_dir = _config.metrics_multiprocess_dir or tempfile.mkdtemp(prefix="pydio-shim-metrics-")
os.makedirs(_metrics_dir, exist_ok=True)
for _stale in os.listdir(_metrics_dir):  # values of an earlier run would be added to this one's
    if _stale.endswith(".db"):
        os.unlink(os.path.join(_metrics_dir, _stale))
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir


def child_exit(server, worker):
    """A worker ended: its live values stop counting (its totals stay in the sums), its slot is free."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
    _connection_counts.release(getattr(worker, "connection_slot", None))


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)


# --- logging --------------------------------------------------------------------------
# The shim writes its own access log ("shim.access": one line per request with
# the status, bytes, duration, kind and cache result), so gunicorn's is silenced.
# Every other line goes through shim.accesslog.MaskSecrets: gunicorn names the
# raw request line of a request it cannot parse or that failed, and a logged
# auth_token with its auth_hash replays.  Access lines are built from the
# already masked target (shim.accesslog.mask_target), so their handler skips
# the filter: it would only scan each line a second time.

loglevel = _config.log_level.lower()
accesslog = None
_FORMAT = {"()": "shim.accesslog.TimestampFormatter", "format": LOG_FORMAT, "datefmt": LOG_DATE_FORMAT}
_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"mask_secrets": {"()": "shim.accesslog.MaskSecrets"}},
    "formatters": {"shim": _FORMAT},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "shim",
            "stream": "ext://sys.stderr",
            "filters": ["mask_secrets"],
        },
        "access": {"class": "shim.accesslog.AccessHandler", "formatter": "shim", "stream": "ext://sys.stderr"},
        "null": {"class": "logging.NullHandler"},
    },
    "root": {"level": "WARNING", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": _config.log_level, "handlers": ["stderr"], "propagate": False},
        "gunicorn.access": {"level": "CRITICAL", "handlers": ["null"], "propagate": False},
        "shim": {"level": _config.log_level, "handlers": ["stderr"], "propagate": False},
        "shim.access": {"level": _config.log_level, "handlers": ["access"], "propagate": False},
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
    # What no line of the shim's format shows, not gathered for every record
    # (the logging HOWTO's "Optimization"): the calling file and line, the
    # thread, the multiprocessing name.  The process id stays (it is printed).
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False


def pre_request(worker, req):
    """gunicorn's own DEBUG line per request, with the method as the shim logs it.

    The method may hold the tail of a body left on the connection ("HUNTER2GET"):
    :func:`shim.accesslog.loggable_method`.  The path has no query.
    """
    worker.log.debug("%s %s", loggable_method(req.method), req.path)
