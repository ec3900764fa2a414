"""Who is asking, and may they read this workspace's feed?

Authentication: key-store tokens are verified here, by recomputing the HMAC
exactly as the legacy server does over the path the client signed; Basic
credentials are taken as given (their password is checked by the legacy
server during the authorization probe).  Anything else (cookie sessions, no
credentials, malformed values) yields no principal and the request is
forwarded, so the legacy server answers it.

Whether the principal may read a workspace is :mod:`shim.authz`'s business.
Cache keys are keyed hashes, never a raw password; nothing secret is ever
logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass

import phpserialize
import sqlalchemy as sa

from . import db
from .cache import TTLCache
from .phpcompat import signed_path_is_utf8, signed_uri, trim
from .phpcompat import user_id as pydio_user_id

log = logging.getLogger(__name__)

_MAX_CREDENTIAL = 4096
_HEX = frozenset("0123456789abcdefABCDEF")
# Key-store tokens are generated alphanumeric; a token outside the URL-unreserved
# set is left to the legacy server, so that the probe can carry it unencoded
# and both sides read the very same string.
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

# A per-process key for cache keys: hashes of credentials are useless outside it.
_CACHE_KEY_SECRET = os.urandom(32)


# The principal of a Basic header depends on the header alone: decoding it and
# keying it cost microseconds on every poll, so each process remembers the headers
# it has seen (in memory only, as the decisions keyed by them are).  Whether the
# credentials are still good is not decided here but by the authorization decision.
_BASIC_PRINCIPALS: dict[str, Principal] = {}
_MAX_BASIC_PRINCIPALS = 1024  # headers are at most 4 KiB: 4 MiB at most


def _keyed(*parts: str | bytes) -> str:
    mac = hmac.new(_CACHE_KEY_SECRET, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part if isinstance(part, bytes) else part.encode("utf-8", "surrogateescape"))
        mac.update(b"\0")
    return mac.hexdigest()


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a feed request."""

    kind: str  # "basic" or "token"
    login: str
    cache_key: str
    authorization: str | None = None  # the Basic header, to pass on in the probe
    token: str | None = None
    private: str | None = None

    def __repr__(self):  # never print credentials, even by accident
        return f"Principal(kind={self.kind!r}, login={self.login!r})"


@dataclass(frozen=True)
class TokenCredentials:
    token: str
    auth_hash: str


def basic_login(header: str | None) -> tuple[str, str] | None:
    """``(login, password)`` from a Basic ``Authorization`` header, or None if malformed."""
    if not header or len(header) > _MAX_CREDENTIAL:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if ":" not in decoded or "\0" in decoded:
        return None
    login, password = decoded.split(":", 1)
    login = trim(login)
    if not login:
        return None
    return login, password


def token_credentials(params: dict[str, str]) -> TokenCredentials | None:
    """``auth_token``/``auth_hash`` from the merged parameters, if well formed."""
    token, auth_hash = params.get("auth_token"), params.get("auth_hash")
    if not token or not auth_hash or len(token) > 256 or len(auth_hash) > 512:
        return None
    nonce, sep, digest = auth_hash.partition(":")
    if not sep or not nonce or len(digest) != 64 or not set(digest) <= _HEX:
        return None
    if not set(token) <= _TOKEN_CHARS:
        return None
    return TokenCredentials(token, auth_hash)


def token_hash(token: str, signed_path: str, nonce: str, private: str) -> str:
    """hex HMAC-SHA256 keyed by the token over ``uri:nonce:private`` (the legacy rule)."""
    message = f"{signed_uri(signed_path)}:{nonce}:{private}".encode("utf-8", "surrogateescape")
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def hash_is_valid(token: str, auth_hash: str, signed_path: str, private: str) -> bool:
    """Whether ``auth_hash`` (``nonce:hex``) signs *signed_path* for this token, as PHP decides.

    PHP compares the hex strings case-sensitively (``==`` on two non-numeric
    strings): an upper-case digest is refused there, so it is refused here.
    A path that is not UTF-8 is refused too (PHP converts it first, in a way
    not reproduced here).  Constant time.
    """
    nonce, sep, given = auth_hash.partition(":")
    if not sep or not given.isascii() or not signed_path_is_utf8(signed_path):
        return False
    expected = token_hash(token, signed_path, nonce, private)
    return hmac.compare_digest(expected.encode("ascii"), given.encode("ascii"))


def sign(token: str, private: str, path: str) -> str:
    """A fresh ``auth_hash`` (``nonce:hash``) for *path*."""
    nonce = secrets.token_hex(20)
    return f"{nonce}:{token_hash(token, path, nonce, private)}"


class KeyStore:
    """Reads key-store rows (``ajxp_simple_store``).

    With a *watch*, a lookup is reused while the watched tables keep their
    generation (a deleted or added token changes it), at most *max_age*
    seconds; without one, every lookup reads.
    """

    def __init__(self, engine, watch=None, max_age: float = 3600.0, max_entries: int = 10000, clock=None):
        self.engine = engine
        self.watch = watch
        self.max_age = max_age
        self._cache = TTLCache(max_entries, clock)

    def lookup(self, token: str) -> tuple[str, str] | None:
        """``(user_id, private)`` for a token usable by the sync client, else None.

        Tokens restricted to an admin task or an IP are left to the legacy
        server (returns None, so the request is forwarded).
        """
        generation = self.watch.generation() if self.watch is not None else None
        key = _keyed("token", token)
        hit = self._cache.get(key)
        if hit is not None and generation is not None and hit[1] == generation:
            return hit[0]
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(db.simple_store.c.serialized_data).where(
                    db.simple_store.c.store_id == "keystore", db.simple_store.c.object_id == token
                )
            ).first()
        result = None
        if row is not None and row[0]:
            try:
                data = phpserialize.loads(db.as_bytes(row[0]), decode_strings=True)
            except (ValueError, TypeError, IndexError, KeyError):  # a corrupt row: the legacy server decides
                data = None
            if (
                isinstance(data, dict)
                and isinstance(data.get("USER_ID"), str)
                and isinstance(data.get("PRIVATE"), str)
                and not data.get("ADMIN_TASK_ID")
                and not data.get("RESTRICT_TO_IP")
            ):
                result = (data["USER_ID"], data["PRIVATE"])
        if generation is not None:
            self._cache.put(key, (result, generation), self.max_age)
        return result


def authenticate(
    params: dict[str, str], authorization: str | None, signed_path: str, keystore: KeyStore
) -> Principal | None:
    """The principal of a feed request, or None (forward it to the legacy server).

    *signed_path* is the path the client signed: the public request path.
    A token whose hash does not verify yields None, so the legacy server
    refuses it with its own answer.
    """
    credentials = token_credentials(params)
    if credentials is not None:
        found = keystore.lookup(credentials.token)
        if found is None:
            return None
        user_id, private = found
        if not hash_is_valid(credentials.token, credentials.auth_hash, signed_path, private):
            return None
        # Pydio logs the token's USER_ID in like a typed login: trimmed, lower-cased.
        key = _keyed("token", credentials.token)
        return Principal("token", pydio_user_id(user_id), key, token=credentials.token, private=private)
    if "auth_token" in params or "auth_hash" in params:
        return None
    if authorization is None:
        return None
    principal = _BASIC_PRINCIPALS.get(authorization)
    if principal is None:
        basic = basic_login(authorization)
        if basic is None:
            return None
        principal = Principal(
            "basic", pydio_user_id(basic[0]), _keyed("basic", authorization), authorization=authorization
        )
        if len(_BASIC_PRINCIPALS) >= _MAX_BASIC_PRINCIPALS:
            _BASIC_PRINCIPALS.clear()
        _BASIC_PRINCIPALS[authorization] = principal
    return principal
