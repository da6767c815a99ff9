"""API keys: who may read (viewer) and who may acknowledge alerts (operator).

The keys file holds one key per line, `role:sha256hex:name`; blank lines and lines starting
with `#` are ignored. Only the SHA-256 of each key is stored: keys are 256-bit random strings,
so a fast hash is enough (nothing to brute-force) and a stolen file grants nothing. A
presented key is hashed and compared with every stored hash by `hmac.compare_digest`, without
stopping at a match, so the answer's timing says nothing about the stored keys. The file is
re-read when it changes, so `python -m api keys add` takes effect without a restart. Deleting
the file revokes every key within a second (fail closed, logged); a file that cannot be parsed
keeps the keys read before, so a half-edited file does not lock operators out.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from api.errors import KeyFileError

log = logging.getLogger(__name__)

Role = Literal["viewer", "operator"]
ROLES: tuple[Role, ...] = ("viewer", "operator")
# An operator may do everything a viewer may.
RANK: dict[Role, int] = {"viewer": 1, "operator": 2}

KEY_PREFIX = "fwk_"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
# What a Bearer token may contain (RFC 6750 b64token); anything else is refused unhashed.
_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
RELOAD_CHECK_S = 1.0

KEY_FILE_HEADER = """\
# Floodwatch API keys: one per line, role:sha256hex:name (role is viewer or operator).
# Only the SHA-256 of each key is kept; add keys with `python -m api keys add`.
"""


@dataclass(frozen=True, slots=True)
class ApiKey:
    role: Role
    digest: str  # hex SHA-256 of the key
    name: str


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: a named key's holder, or `anonymous` (viewer, when allowed)."""

    name: str
    role: Role
    anonymous: bool = False


ANONYMOUS = Principal("anonymous", "viewer", anonymous=True)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh key: 256 random bits, URL-safe, with a prefix that makes leaked keys greppable."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_keys(text: str, source: str) -> tuple[ApiKey, ...]:
    """Every key in a keys file's text; KeyFileError names the first bad line and the fix."""
    keys: list[ApiKey] = []
    names: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        where = f"{source} line {number}"
        if len(parts) != 3:
            raise KeyFileError(
                f"{where} is not role:sha256hex:name; write one key per line in that form "
                "(add keys with `python -m api keys add`)."
            )
        role, digest, name = parts
        if role not in ROLES:
            raise KeyFileError(f"{where}: role {role!r} is not viewer or operator.")
        if _DIGEST.fullmatch(digest) is None:
            raise KeyFileError(
                f"{where}: {digest[:16]!r}... is not 64 lowercase hex digits (a SHA-256); "
                "store the key's hash, never the key itself."
            )
        if NAME.fullmatch(name) is None:
            raise KeyFileError(
                f"{where}: name {name!r} must be 1-64 letters, digits, '_', '.', '@' or '-'."
            )
        if name in names:
            raise KeyFileError(f"{where}: name {name!r} is used twice; give every key its own.")
        names.add(name)
        keys.append(ApiKey("viewer" if role == "viewer" else "operator", digest, name))
    return tuple(keys)


def read_keys(path: Path) -> tuple[ApiKey, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read the API keys file ({exc}).") from exc
    return parse_keys(text, str(path))


def add_key(path: Path, role: Role, name: str) -> str:
    """Append a new key's hash to the file (created 0600 if missing); return the key, once."""
    if NAME.fullmatch(name) is None:
        raise KeyFileError(f"name {name!r} must be 1-64 letters, digits, '_', '.', '@' or '-'.")
    existing = read_keys(path) if path.exists() else ()
    if any(k.name == name for k in existing):
        raise KeyFileError(f"{path} already has a key named {name!r}; pick another name.")
    key = new_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as out:
            if not existing and out.tell() == 0:
                out.write(KEY_FILE_HEADER)
            out.write(f"{role}:{hash_key(key)}:{name}\n")
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot write the API keys file ({exc}).") from exc
    return key


class KeyStore:
    """The keys of a keys file (or none), re-read when the file changes."""

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._path = path
        self._clock = clock
        self._keys: tuple[ApiKey, ...] = ()
        self._stamp: tuple[int, int] | None = None
        self._checked = -1e9
        if path is not None:
            self._keys = read_keys(path)
            self._stamp = self._stat()

    def __len__(self) -> int:
        return len(self._keys)

    def _stat(self) -> tuple[int, int] | None:
        assert self._path is not None
        try:
            st = self._path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _maybe_reload(self) -> None:
        now = self._clock()
        if self._path is None or now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        stamp = self._stat()
        if stamp == self._stamp:
            return
        if stamp is None and not self._path.exists():
            # Fail closed: deleting the file is how an operator revokes every key at once.
            log.error(
                "API keys file %s is gone: every API key is revoked until it is restored "
                "(put the file back from a backup, or create keys with `python -m api keys add "
                "--api-keys %s`)",
                self._path,
                self._path,
            )
            self._keys = ()
            self._stamp = stamp
            return
        try:
            self._keys = read_keys(self._path)
        except KeyFileError as exc:
            # Keep serving the keys we had: a half-edited file must not lock operators out.
            log.error("keeping the previous API keys: %s", exc)
        else:
            log.info("API keys reloaded from %s (%d keys)", self._path, len(self._keys))
        self._stamp = stamp

    def lookup(self, presented: str) -> ApiKey | None:
        """The stored key matching `presented`, compared in constant time; None if none does."""
        self._maybe_reload()
        if _TOKEN.fullmatch(presented) is None or len(presented) > 512:
            return None
        digest = hash_key(presented)
        found: ApiKey | None = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest) and found is None:
                found = key
        return found
