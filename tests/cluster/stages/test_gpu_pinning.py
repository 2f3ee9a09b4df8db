"""Embed actors are pinned to GPUs as documented, checked on a Ray with fake GPUs (no GPU needed).

The actors get the options the pipeline itself gives its embed step (``cluster.pipeline.build_dataset``,
read back from the dataset's plan), not ``EmbedStage.placement`` called on the side.

Ray is started in a subprocess: the suite's session Ray (``ray_local``) has no GPUs and a
second ``ray.init`` in the same process is not allowed while it runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def seen() -> dict[str, Any]:
    env = {"PYTHONPATH": str(REPO_ROOT), "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "tests.cluster.stages.gpu_pinning_probe"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_pipeline_asks_for_the_configured_pool_and_gpus(seen: dict[str, Any]) -> None:
    for layout, workers, gpus in (("one_per_gpu", 2, 1.0), ("half_gpu", 4, 0.5)):
        step = seen[layout]
        assert step["pool"] == {"strategy": "ActorPoolStrategy", "min_size": workers, "max_size": workers}, layout
        assert step["remote_args"] == {"num_gpus": gpus, "num_cpus": 0.5}, layout


def test_one_gpu_per_worker_gives_each_actor_its_own_gpu(seen: dict[str, Any]) -> None:
    actors = seen["one_per_gpu"]["actors"]
    assert len(actors) == 2 and len({a["pid"] for a in actors}) == 2
    ids = [a["gpu_ids"] for a in actors]
    assert sorted(ids) == [["0"], ["1"]]
    for a in actors:  # what torch in the actor would see as cuda:0
        assert a["cuda_visible_devices"] == a["gpu_ids"][0]


def test_half_a_gpu_per_worker_places_two_actors_per_gpu(seen: dict[str, Any]) -> None:
    actors = seen["half_gpu"]["actors"]
    assert len(actors) == 4
    assert all(len(a["gpu_ids"]) == 1 and a["cuda_visible_devices"] == a["gpu_ids"][0] for a in actors)
    assert Counter(a["gpu_ids"][0] for a in actors) == {"0": 2, "1": 2}
