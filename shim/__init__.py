"""pydio-shim: a fast front for a legacy Pydio 8 server.

It answers the desktop client's change feed (``/api/{ws}/changes/{seq}``) straight
from the database tables that Pydio's triggers already fill, and forwards every
other request to the PHP server, repairing subpath and rewrite problems on the way.
"""

__version__ = "0.1.0"
