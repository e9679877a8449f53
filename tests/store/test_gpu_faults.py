"""A job handed back by a worker whose GPU failed: the first time it is not the job's fault (its
attempt is given back); a second GPU failure under the same job counts, and the job ends after
its attempts, as a crashing job does. On both databases."""

from __future__ import annotations

from fastsvd.store.db import Database
from fastsvd.store.jobs import GPU_FAULT, JobState, JobStore
from tests.support.bodies import I2V

CUDA = "the GPU failed: CUDA error: an illegal memory access was encountered"


def test_the_first_gpu_failure_is_not_the_jobs_fault_a_second_one_is(db: Database) -> None:
    store = JobStore(db, max_attempts=2)
    job, _new = store.submit(key_id="k", endpoint=I2V, input={"image_url": "x"})
    attempts = []
    for worker in ("a", "b", "c"):
        claim = store.claim(worker, 600.0, [I2V])
        assert claim is not None
        assert store.hand_back(job.id, claim.token, CUDA)
        after = store.get(job.id)
        assert after is not None
        attempts.append((after.state, after.attempts))
    assert attempts == [
        (JobState.queued, 0),  # given back: the GPU's fault
        (JobState.queued, 1),  # it followed the job: counted
        (JobState.completed, 2),  # its attempts used: ended
    ]
    ended = store.get(job.id)
    assert ended is not None
    assert ended.error_type == "runner_disconnected"
    lines = [line.message for line in store.logs(job.id)]
    assert sum(line.startswith(GPU_FAULT) for line in lines) == 3
    assert CUDA in lines[0]


def test_a_worker_that_lost_the_lease_hands_back_nothing(db: Database) -> None:
    store = JobStore(db)
    job, _new = store.submit(key_id="k", endpoint=I2V, input={"image_url": "x"})
    claim = store.claim("a", 600.0, [I2V])
    assert claim is not None
    assert not store.hand_back(job.id, claim.token + 1, CUDA)
    held = store.get(job.id)
    assert held is not None
    assert held.state is JobState.running
