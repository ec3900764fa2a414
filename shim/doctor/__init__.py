"""``pydio-shim doctor``: check an install from end to end and say how to fix what is wrong.

Each check yields one :class:`Finding`, printed as one line: ``ok``,
``warning``, ``failed`` or ``skipped`` (not run, because a check it needs did
not pass or an option is missing), what was seen, and for anything not ok how
to fix it.  The checks, in the order they run:

- :mod:`.configuration`: what the configuration amounts to;
- :mod:`.database`: the database answers (a wrong password, an unknown
  database or a closed port is named as such), and the feed replica when one
  is configured; the tables the shim reads exist; the three meta.syncable
  triggers exist and fire (on a row inserted, updated and deleted inside a
  transaction that is rolled back, so nothing is kept); the feed index;
- :mod:`.workspaces`: each workspace, syncable? indexed?
- :mod:`.legacy`: the legacy server answers at ``upstream.url`` +
  ``upstream.prefix``; its REST API answers at ``{prefix}/api/`` (Pydio's own
  401 challenge, not the web server's 404 of a missing rewrite rule); with a
  test account (``--user``), Basic credentials reach PHP;
- :mod:`.through_shim`: the shim answers at its public URL, and with
  ``--user``, end to end: a test file created through the shim shows up in the
  shim's feed, then is deleted.

The doctor never prints a password, and never changes the database except for
what the rolled-back trigger test and the end-to-end file (created, then
deleted through Pydio) imply.  Exit status of the command: 0 when no check
failed (warnings and skipped checks allowed), 1 otherwise.
"""

from __future__ import annotations

from . import configuration, database, legacy, through_shim, workspaces  # noqa: F401 - registers the checks
from .base import (
    CHECKS,
    FAILED,
    OK,
    SKIPPED,
    WARNING,
    Context,
    Finding,
    Progress,
    as_json,
    check_url,
    exit_status,
    run,
    summary,
)
from .database import TRIGGER_ROLES
from .legacy import password_matches

__all__ = [
    "CHECKS",
    "FAILED",
    "OK",
    "SKIPPED",
    "WARNING",
    "Context",
    "Finding",
    "Progress",
    "TRIGGER_ROLES",
    "as_json",
    "check_url",
    "exit_status",
    "password_matches",
    "run",
    "summary",
]
