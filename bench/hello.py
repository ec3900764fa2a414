"""The hello-world WSGI app the feed and proxy figures are measured against.

It answers every request with the body of a quiet feed poll (``BENCH_HELLO_BODY``,
by default ``\\nLAST_SEQ:1000000``: the same bytes the shim sends), and nothing
else: no routing, no logging, no database.  ``bench/run.py`` serves it with the
shim's own gunicorn configuration (``gunicorn -c python:shim.gunicorn_conf``,
same worker class, workers, threads and logging), so the ratio shim / hello-world
says how much of the server's limit the shim's own work leaves.
"""

import os

BODY = os.environ.get("BENCH_HELLO_BODY", "\nLAST_SEQ:1000000").encode()
HEADERS = [("Content-Type", "text/plain; charset=UTF-8"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
