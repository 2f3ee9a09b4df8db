"""The read tasks' counter: one actor per driver, each run's totals apart and forgotten at its end."""

from __future__ import annotations

import gc
import time

import pytest

pytestmark = [pytest.mark.integration]


def wait_for(progress, expected: dict[str, int]) -> dict[str, int]:  # noqa: ANN001
    """Reports are fire-and-forget; wait until they arrived (the deadline only stops a hang)."""
    deadline = time.monotonic() + 60
    while (got := progress.get(timeout_s=30)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def test_runs_of_one_driver_share_the_actor_and_keep_their_totals_apart(ray_local: None) -> None:
    import ray

    from cluster.progress import read_progress

    before = read_progress("run-0")
    actor_id = before.actor._actor_id
    del before  # a run ended and its handles are gone: the actor stays for the next run
    gc.collect()
    time.sleep(1)
    first, second = read_progress("run-1"), read_progress("run-2")
    assert first.actor._actor_id == second.actor._actor_id == actor_id  # no worker process per run
    assert ray.get(first.actor.get.remote("run-1")) == {}
    first.add(docs_read=3, chunks_tokenized=5)
    second.add(docs_read=1)
    first.add(docs_read=2, chunks_tokenized=1)
    assert wait_for(first, {"docs_read": 5, "chunks_tokenized": 6}) == {"docs_read": 5, "chunks_tokenized": 6}
    assert wait_for(second, {"docs_read": 1}) == {"docs_read": 1}

    first.close()  # the run ended: its totals are gone, the other run's stay
    assert wait_for(first, {}) == {}
    assert second.get(timeout_s=30) == {"docs_read": 1}

    # An actor that died (its node lost) is replaced for the next run.
    ray.kill(second.actor)
    deadline = time.monotonic() + 60
    while True:
        third = read_progress("run-3")
        try:
            third.add(docs_read=7)
            assert wait_for(third, {"docs_read": 7}) == {"docs_read": 7}
            break
        except ray.exceptions.RayActorError:  # the name is freed once Ray has seen the death
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert third.actor._actor_id != first.actor._actor_id
    third.close()
