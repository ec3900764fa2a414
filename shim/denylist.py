"""Paths of a Pydio install that must never be served (the stock nginx deny list).

Pydio's sample nginx configuration refuses ``/conf``, ``/core``,
``/data/(files|personal|logs|plugins|tmp|cache)``, dot-files and
``plugins/editor.zoho/agent/files``.  The shim refuses them too, before anything
reaches the legacy server, whatever the spelling: percent-encoded (also twice),
backslashes, duplicate slashes, ``.``/``..`` segments, ``;`` parameters, case.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_DENIED = re.compile(
    r"^/(conf|core)(/|$)"
    r"|^/data/(files|personal|logs|plugins|tmp|cache)(/|$)"
    r"|/plugins/editor\.zoho/agent/files(/|$)"
)


def canonical_path(path: str) -> str:
    """*path* decoded and normalised the way a file system or PHP might read it."""
    for _ in range(4):  # undo multiple layers of percent-encoding
        decoded = unquote(path, encoding="latin-1")
        if decoded == path:
            break
        path = decoded
    path = path.replace("\\", "/")
    segments: list[str] = []
    for segment in path.split("/"):
        segment = segment.split(";", 1)[0]
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/" + "/".join(segments)


def is_denied(app_path: str) -> bool:
    """True when *app_path* (relative to the Pydio root) names a protected file."""
    if "\x00" in app_path or "%00" in app_path:
        return True
    canonical = canonical_path(app_path)
    if "\x00" in canonical:
        return True
    if any(segment.startswith(".") for segment in canonical.split("/")):
        return True
    return bool(_DENIED.search(canonical.lower()))
