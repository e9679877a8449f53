"""The webhook signing keys: one made however many processes start at once, rotation with an
overlap, and one set seen by every process of the database."""

from __future__ import annotations

import threading

from fastsvd.store.db import Database
from fastsvd.store.signing import SigningKeyStore


def test_processes_starting_together_make_one_key(db: Database) -> None:
    made = []

    def start() -> None:
        made.append(SigningKeyStore(db).ensure().kid)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(made)) == 1
    assert [k.kid for k in SigningKeyStore(db).published()] == made[:1]


def test_rotation_publishes_both_keys_until_the_overlap_ends(db: Database) -> None:
    keys = SigningKeyStore(db)
    first = keys.ensure()
    second = keys.rotate(overlap_s=60)
    assert keys.current().kid == second.kid
    now = second.created_at
    assert [k.kid for k in keys.published(now)] == [second.kid, first.kid]
    assert [k.kid for k in keys.published(now + 61)] == [second.kid]
    third = keys.rotate(overlap_s=0)  # the older keys go at once, the one with time left too
    assert [k.kid for k in keys.published(third.created_at + 0.001)] == [third.kid]
