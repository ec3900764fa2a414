r"""Paths of a Pydio install that must never be served (the stock nginx deny list).

Pydio 8.2.5's sample nginx configuration refuses, case-insensitively and from
the install's root,
``^/(?:\.|conf|core|data/(?:files|personal|logs|plugins|tmp|cache)|plugins/editor.zoho/agent/files)``.
The shim refuses the same, before anything reaches the legacy server, whatever
the spelling: percent-encoded (also twice), backslashes, duplicate slashes,
``.``/``..`` segments, ``;`` parameters, case, Windows' trailing dots and
``::$DATA`` streams.  It refuses nothing else: a dot-file below the root
(``/api/my-files/mkfile/.gitignore``, a client creating one) goes to PHP,
which serves it as the stock install does.

Unlike nginx's ``^/conf`` prefix match, names are matched whole: ``/conference``
is not ``/conf``.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from .cache import remembered_for_short_paths

_DENIED = re.compile(
    r"^/(conf|core)(/|$)"
    r"|^/data/(files|personal|logs|plugins|tmp|cache)(/|$)"
    r"|^/plugins/editor\.zoho/agent/files(/|$)"
    r"|^/\."
)

#: Layers of percent-encoding undone; a path still encoded after that many is refused.
MAX_DECODING_LAYERS = 4
#: Verdicts remembered per process (short paths only: shim.cache).
VERDICTS_REMEMBERED = 4096


class _Suspicious(Exception):
    """The path cannot be read one unambiguous way: refuse it."""


def _canonical(path: str, strict: bool) -> str:
    for _ in range(MAX_DECODING_LAYERS):
        decoded = unquote(path, encoding="latin-1")
        if decoded == path:
            break
        path = decoded
    else:
        if strict and unquote(path, encoding="latin-1") != path:
            raise _Suspicious("too many layers of percent-encoding")
    path = path.replace("\\", "/")
    segments: list[str] = []
    for segment in path.split("/"):
        segment = segment.split(";", 1)[0]
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            elif strict:
                # Above the Pydio root: the server behind would resolve it
                # against its own prefix, outside what the shim checks.
                raise _Suspicious("a '..' segment above the root")
            continue
        segments.append(segment)
    return "/" + "/".join(segments)


def _windows_name(segment: str) -> str:
    # Windows ignores trailing dots and spaces and reads "name::$DATA" as "name".
    return segment.split("::", 1)[0].rstrip(". ")


# A path's answer never changes; clients send the same paths again and again
# (a feed poll, a download), and canonicalising one costs microseconds.
@remembered_for_short_paths(VERDICTS_REMEMBERED)
def is_denied(app_path: str) -> bool:
    """True when *app_path* (relative to the Pydio root) names a protected file.

    Also true for a path that cannot be read one unambiguous way: a NUL byte,
    a ``..`` climbing above the root, more than :data:`MAX_DECODING_LAYERS`
    layers of percent-encoding.
    """
    if "\x00" in app_path or "%00" in app_path:
        return True
    try:
        canonical = _canonical(app_path, strict=True)
    except _Suspicious:
        return True
    if "\x00" in canonical:
        return True
    segments = canonical.split("/")
    lowered = canonical.lower()
    windows = "/".join(_windows_name(segment) for segment in segments).lower()
    return bool(_DENIED.search(lowered) or _DENIED.search(windows))
