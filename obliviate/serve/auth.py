"""API keys: a YAML file of sha256 hashes and roles; `Authorization: Bearer KEY` on every request.

    keys:
      - sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        role: admin          # files and reviews forget requests, and generates
        name: legal-team     # optional, shown nowhere but the file
      - sha256: ...
        role: client         # may only generate

A key is 32 random bytes, URL-safe base64 with the prefix `obl-`; it is printed once when made
(`obliviate serve add-key`) and only its hash is stored. Keys are compared by hash in constant time.
The file is re-read when it changes, so a key added while the server runs works at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from pathlib import Path
from typing import Literal

import yaml
from fastapi import HTTPException, Request

from obliviate.errors import ConfigError
from obliviate.io import atomic_open

Role = Literal["admin", "client"]
ROLES = ("admin", "client")
PREFIX = "obl-"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def read_keys(path: Path) -> list[dict[str, str]]:
    """The key entries of `path` ([] when it does not exist yet); a malformed entry is a one-line ConfigError."""
    if not path.exists():
        return []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML or JSON") from None
    keys = data.get("keys", []) if isinstance(data, dict) else None
    if not isinstance(keys, list):
        raise ConfigError(f"{path}: expected a mapping with a 'keys' list")
    for i, entry in enumerate(keys):
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or len(entry["sha256"]) != 64:
            raise ConfigError(f"{path}: keys[{i}].sha256: expected the 64 hex digits of a key's sha256")
        if entry.get("role") not in ROLES:
            raise ConfigError(f"{path}: keys[{i}].role: expected admin or client, got {entry.get('role')!r}")
    return keys


def add_key(path: Path, role: str, name: str | None = None) -> str:
    """Make a key with `role`, store its hash in `path` (created if missing) and return the key itself."""
    if role not in ROLES:
        raise ConfigError(f"--role: expected admin or client, got {role!r}")
    keys = read_keys(path)
    key = PREFIX + secrets.token_urlsafe(32)
    entry = {"sha256": key_hash(key), "role": role, **({"name": name} if name else {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as handle:
        yaml.safe_dump({"keys": [*keys, entry]}, handle, sort_keys=False)
    return key


class KeyStore:
    """The keys file, re-read when its modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._roles: dict[str, str] = {}
        self._lock = threading.Lock()
        self._reload()

    def _reload(self) -> None:
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = (0, 0)
        if stamp != self._stamp:
            roles = {e["sha256"].lower(): e["role"] for e in read_keys(self.path)}
            with self._lock:
                self._roles, self._stamp = roles, stamp

    def role(self, key: str | None) -> str | None:
        """The role of `key`, or None for a missing or unknown key."""
        if not key:
            return None
        self._reload()
        digest = key_hash(key)
        found = None
        for stored, role in self._roles.items():
            if hmac.compare_digest(stored, digest):
                found = role
        return found


def bearer(header: str | None) -> str | None:
    """The key of an `Authorization: Bearer KEY` header."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def require(role: str):
    """A FastAPI dependency: the request's key must exist (401) and, for role "admin", be an admin's (403).

    Returns the caller's role. The key is read from `Authorization: Bearer KEY`.
    """
    def check(request: Request) -> str:
        store: KeyStore = request.app.state.service.keys
        found = store.role(bearer(request.headers.get("authorization")))
        if found is None:
            raise HTTPException(401, "missing or unknown API key (send Authorization: Bearer KEY)")
        if role == "admin" and found != "admin":
            raise HTTPException(403, "this endpoint needs an admin key")
        return found

    return check
