"""The deployment's Ed25519 keys that sign fal-style webhooks, kept in the database so that every
process signs with the same key and the API publishes the same set (``/.well-known/jwks.json``).

One key signs at a time: the newest, whose ``retires_at`` is None. Rotating adds a new signing
key and gives the old ones a ``retires_at``; until then they are still published, so a receiver
holding a webhook signed just before the rotation can still verify it. The first key is made on
the first start (``ensure``), under the migration lock, so processes starting together make one.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import Connection, insert, or_, select, update

from fastsvd.store.db import Database
from fastsvd.store.tables import webhook_signing_keys as keys


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    """One Ed25519 key: its id, its 32-byte seed, and when it stops being published."""

    kid: str
    seed: bytes
    created_at: float
    retires_at: float | None

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)

    def jwk(self) -> dict[str, str]:
        """The public key as a JSON Web Key (RFC 8037: OKP, Ed25519), as fal publishes its own."""
        public = Ed25519PrivateKey.from_private_bytes(self.seed).public_key()
        raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64url(raw),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }


class SigningKeyStore:
    """Makes, rotates and reads the webhook signing keys."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def ensure(self) -> SigningKey:
        """The signing key, made now if the deployment has none (its first start)."""
        with self.db.write() as conn:
            self.db.lock_for_migrations(conn)  # one key, however many processes start at once
            row = conn.execute(
                select(keys).where(keys.c.retires_at.is_(None)).order_by(keys.c.created_at.desc())
            ).first()
            if row is not None:
                return SigningKey(row.kid, _seed(row.private_key), row.created_at, None)
            return self._add(conn)

    def current(self) -> SigningKey:
        """The key that signs now."""
        with self.db.read() as conn:
            row = conn.execute(
                select(keys).where(keys.c.retires_at.is_(None)).order_by(keys.c.created_at.desc())
            ).first()
        if row is None:
            return self.ensure()
        return SigningKey(row.kid, _seed(row.private_key), row.created_at, None)

    def published(self, now: float | None = None) -> list[SigningKey]:
        """The keys a receiver may meet: the signing key and those not yet retired, newest
        first."""
        now = time.time() if now is None else now
        with self.db.read() as conn:
            rows = conn.execute(
                select(keys)
                .where(or_(keys.c.retires_at.is_(None), keys.c.retires_at > now))
                .order_by(keys.c.created_at.desc())
            ).all()
        if not rows:
            return [self.ensure()]
        return [SigningKey(r.kid, _seed(r.private_key), r.created_at, r.retires_at) for r in rows]

    def rotate(self, overlap_s: float) -> SigningKey:
        """A new signing key; the old ones stay published for ``overlap_s`` more seconds at
        most (0: they go at once)."""
        now = time.time()
        until = now + overlap_s
        with self.db.write() as conn:
            self.db.lock_for_migrations(conn)
            conn.execute(
                update(keys)
                .where(or_(keys.c.retires_at.is_(None), keys.c.retires_at > until))
                .values(retires_at=until)
            )
            return self._add(conn, now)

    @staticmethod
    def _add(conn: Connection, now: float | None = None) -> SigningKey:
        seed = secrets.token_bytes(32)
        key = SigningKey(secrets.token_hex(8), seed, time.time() if now is None else now, None)
        conn.execute(
            insert(keys).values(
                kid=key.kid, private_key=_b64url(seed), created_at=key.created_at, retires_at=None
            )
        )
        return key


def _seed(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
