"""gunicorn settings for pydio-shim, for those who run gunicorn themselves:

    gunicorn -c conf/gunicorn.conf.py shim.wsgi:application

The settings themselves ship with the package (shim/gunicorn_conf.py), so that
an installed shim runs with them too: ``pydio-shim serve`` uses them directly
(``gunicorn -c python:shim.gunicorn_conf``).  Copy this file and add settings
below the import to change some; gunicorn's command line wins over both.
"""

from shim.gunicorn_conf import *  # noqa: F403 - every setting and hook, by name
