"""Run by test_gpu_pinning.py in its own process: a Ray with fake GPUs, actors placed as the embed stage places them.

Prints one JSON line: for each layout, the GPU ids and CUDA_VISIBLE_DEVICES each actor saw.
"""

from __future__ import annotations

import json
import os
import sys


class PinningProbe:
    """Stands where EmbedStage stands (same actor options); reports what Ray gave it."""

    def seen(self) -> dict[str, object]:
        import ray

        return {"pid": os.getpid(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def placements(workers: int, gpus: float) -> list[dict[str, object]]:
    """Start the pool's actors with the embed stage's options, all at once, and ask each what it got.

    Ray Data's ``ActorPoolStrategy`` creates its actors with exactly these ``num_gpus`` /
    ``num_cpus`` options; plain actors keep this check to a few seconds.
    """
    import ray

    from cluster.settings import ClusterConfig
    from cluster.stages.embed import EmbedStage

    options = EmbedStage.placement(ClusterConfig(workers=workers, gpus_per_worker=gpus, cpus_per_worker=0.5))
    assert options["compute"].min_size == options["compute"].max_size == workers
    actor = ray.remote(num_gpus=options["num_gpus"], num_cpus=options["num_cpus"])(PinningProbe)
    pool = [actor.remote() for _ in range(workers)]
    seen = ray.get([a.seen.remote() for a in pool])
    for a in pool:
        ray.kill(a)
    return seen


def main() -> None:
    import ray

    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        print(json.dumps({"one_per_gpu": placements(2, 1.0), "half_gpu": placements(4, 0.5)}))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
