"""The demo, and the stand-in for the legacy server it runs (shared with the tests).

- :mod:`.standin`: a small WSGI stand-in for a Pydio 8.2.5 server;
- :mod:`.pydio_store`: users, rights and workspaces as Pydio stores them;
- :mod:`.legacy_feed`: the stand-in's literal rendition of the legacy feed loop;
- :mod:`.stack`: ``pydio-shim demo``: SQLite, the stand-in and the shim under gunicorn.
"""
