"""Key-store token hashes re-signed when a request changes prefix on the way.

A client signs ``auth_hash`` over the path it sees (public prefix included);
the legacy server checks it over the path it sees (upstream prefix included).
When the two prefixes differ, a valid hash is replaced by a fresh one for the
upstream path, in the query or in the first bytes of a form body.  A hash that
is not valid for the public path stays as it is, for the legacy server to
refuse: the shim never makes a request acceptable that was not.
"""

from __future__ import annotations

import logging
import re
import secrets
from urllib.parse import quote

import sqlalchemy as sa

from . import auth
from .phpcompat import parse_query, urldecode_bytes
from .upstream import CHUNK, SizedBody

log = logging.getLogger(__name__)

#: How much of a request body is searched for ``auth_hash`` (form fields come first).
TOKEN_SEARCH_BYTES = 64 * 1024
_FORM_VALUE = {
    "urlencoded": lambda name: re.compile(rb"(?:^|&)" + name + rb"=([^&]*)"),
    "multipart": lambda name: re.compile(rb'name="' + name + rb'"\r?\n(?:[^\r\n]+\r?\n)*\r?\n([^\r\n]*)\r?\n'),
}


def replace_query_param(query: str, name: str, value: str) -> str:
    """*query* with parameter *name* set to *value* (URL-encoded); other bytes untouched."""
    encoded = quote(value, safe="")
    parts = query.split("&") if query else []
    for i, part in enumerate(parts):
        if part.split("=", 1)[0] == name:
            parts[i] = f"{name}={encoded}"
            return "&".join(parts)
    parts.append(f"{name}={encoded}")
    return "&".join(parts)


def resign_query(query: str, token: str, private: str, upstream_path: str) -> str:
    """The query with ``auth_hash`` re-signed (fresh nonce) for *upstream_path*."""
    return replace_query_param(query, "auth_hash", auth.sign(token, private, upstream_path))


def _same_length_hash(token: str, private: str, upstream_path: str, old_hash: str) -> str:
    """A fresh ``nonce:hash`` for *upstream_path* exactly as long as *old_hash*.

    Same length, so a body carrying it keeps its ``Content-Length`` and can be
    patched while it streams.
    """
    nonce_length = max(1, len(old_hash) - 65)
    nonce = secrets.token_hex(nonce_length)[:nonce_length]
    return f"{nonce}:{auth.token_hash(token, upstream_path, nonce, private)}"


def _private_if_valid(keystore, token: str, auth_hash: str, public_path: str) -> str | None:
    """The token's private key when *auth_hash* is a valid signature of *public_path*."""
    credentials = auth.token_credentials({"auth_token": token, "auth_hash": auth_hash})
    if credentials is None:
        return None
    found = keystore.lookup(token)
    if found is None or not auth.hash_is_valid(token, auth_hash, public_path, found[1]):
        return None
    return found[1]


def resign_query_if_valid(query: str, public_path: str, upstream_path: str, keystore) -> str:
    """*query* with ``auth_hash`` re-signed for *upstream_path* when it is valid for *public_path*."""
    pairs = dict(parse_query(query))
    token, auth_hash = pairs.get("auth_token"), pairs.get("auth_hash")
    if not token or not auth_hash:
        return query
    private = _private_if_valid(keystore, token, auth_hash, public_path)
    return query if private is None else resign_query(query, token, private, upstream_path)


def resign_body_head(head: bytes, content_type: str, public_path: str, upstream_path: str, keystore) -> bytes:
    """The first bytes of a form body with ``auth_hash`` re-signed in place (same length).

    Handles ``application/x-www-form-urlencoded`` and ``multipart/form-data``
    bodies whose ``auth_token``/``auth_hash`` fields lie within *head*.
    """
    kind = (
        "multipart"
        if content_type.startswith("multipart/form-data")
        else ("urlencoded" if content_type.startswith("application/x-www-form-urlencoded") else None)
    )
    if kind is None:
        return head
    token_match = _FORM_VALUE[kind](rb"auth_token").search(head)
    hash_match = _FORM_VALUE[kind](rb"auth_hash").search(head)
    if not token_match or not hash_match:
        return head
    decode = urldecode_bytes if kind == "urlencoded" else (lambda raw: raw)
    try:
        token = decode(token_match.group(1)).decode("ascii")
        old_hash = decode(hash_match.group(1)).decode("ascii")
    except UnicodeDecodeError:
        return head
    private = _private_if_valid(keystore, token, old_hash, public_path)
    if private is None:
        return head
    new_hash = _same_length_hash(token, private, upstream_path, old_hash)
    raw_old = hash_match.group(1)
    # Keep the client's encoding of ':' so the field keeps its byte length.
    colon = b"%3A" if (b"%3A" in raw_old or b"%3a" in raw_old) else b":"
    raw_new = new_hash.encode().replace(b":", colon, 1)
    if len(raw_new) != len(raw_old):
        return head
    start, end = hash_match.span(1)
    return head[:start] + raw_new + head[end:]


class HeadReplacedReader(SizedBody):
    """A sized body whose first bytes were replaced (same length), the rest streamed."""

    def __init__(self, head: bytes, rest, length: int):
        super().__init__(length)
        self.head = head
        self.rest = rest

    def read(self, size: int = CHUNK) -> bytes:
        if self.head:
            chunk, self.head = self.head[:size], self.head[size:]
            return chunk
        return self.rest.read(size)


def resign_for_upstream(keystore, content_type: str, public_path: str, upstream_path: str, query, body):
    """``(query, body)`` with a valid token hash re-signed for *upstream_path* (query or form body).

    *body* is None, bytes or a sized reader; a reader's first bytes are read
    and replaced, the rest still streams.  An unreadable key store leaves the
    hash unchanged (the legacy server then refuses it, as it would anyway).
    """
    try:
        if query and "auth_hash" in query:
            query = resign_query_if_valid(query, public_path, upstream_path, keystore)
        if body and content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            if isinstance(body, bytes):
                body = resign_body_head(body, content_type, public_path, upstream_path, keystore)
            else:
                wanted = min(len(body), TOKEN_SEARCH_BYTES)
                head = bytearray()
                while len(head) < wanted and (chunk := body.read(wanted - len(head))):
                    head += chunk
                replaced = resign_body_head(bytes(head), content_type, public_path, upstream_path, keystore)
                body = HeadReplacedReader(replaced, body, len(body))
    except sa.exc.SQLAlchemyError as exc:
        log.warning("key store unreadable, token passed on unchanged: %s", exc.__class__.__name__)
    return query, body
