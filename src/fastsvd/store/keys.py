"""API keys: ``<key_id>:<secret>``, stored as a hash of the secret, compared in constant time."""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import insert, select, update

from fastsvd.store.db import Database
from fastsvd.store.tables import api_keys


class Scope(enum.StrEnum):
    """What a key may do."""

    user = "user"  # submit and read its own requests
    admin = "admin"  # also manage keys


@dataclass(frozen=True)
class KeyInfo:
    """A key as listed: never its secret."""

    key_id: str
    name: str
    scope: Scope
    created_at: float
    revoked_at: float | None
    webhook_secret: str


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    """Creates, lists, revokes and checks API keys."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, name: str = "", scope: Scope = Scope.user) -> tuple[str, KeyInfo]:
        """A new key; returns the full ``key_id:secret`` string (shown once) and its info."""
        key_id = str(uuid.uuid4())
        secret = secrets.token_hex(32)
        webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        now = time.time()
        with self.db.write() as conn:
            conn.execute(
                insert(api_keys).values(
                    key_id=key_id,
                    secret_hash=_hash(secret),
                    name=name,
                    scope=scope.value,
                    webhook_secret=webhook_secret,
                    created_at=now,
                )
            )
        info = KeyInfo(key_id, name, scope, now, None, webhook_secret)
        return f"{key_id}:{secret}", info

    def list(self) -> list[KeyInfo]:
        """Every key, oldest first."""
        with self.db.read() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at)).all()
        return [
            KeyInfo(r.key_id, r.name, Scope(r.scope), r.created_at, r.revoked_at, r.webhook_secret)
            for r in rows
        ]

    def revoke(self, key_id: str) -> bool:
        """Revoke ``key_id``; False when there is no such live key."""
        with self.db.write() as conn:
            done = conn.execute(
                update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        return done.rowcount == 1

    def check(self, key: str) -> KeyInfo | None:
        """The live key that ``key_id:secret`` names, or None. Constant time in the secret."""
        key_id, sep, secret = key.partition(":")
        if not sep or not key_id or not secret or len(key_id) > 64:
            return None
        with self.db.read() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()
        expected = row.secret_hash if row is not None else _hash("no such key")
        matches = hmac.compare_digest(_hash(secret), expected)
        if row is None or not matches or row.revoked_at is not None:
            return None
        return KeyInfo(
            row.key_id, row.name, Scope(row.scope), row.created_at, None, row.webhook_secret
        )

    def count_live(self) -> int:
        """How many keys are not revoked."""
        return sum(1 for k in self.list() if k.revoked_at is None)
