"""Run by test_gpu_pinning.py in its own process: a Ray with fake GPUs, actors placed as the pipeline places them.

The placement comes from the dataset :func:`cluster.pipeline.build_dataset` builds (nothing
patched): the embed step's actor-pool strategy and Ray remote arguments are read back from its
logical plan, and actors are started with exactly those arguments. So a pipeline that stops
asking for GPUs (or for its pool size) fails the test, whatever ``EmbedStage.placement`` says.

Prints one JSON line: for each layout, the embed step's options and what each actor saw.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


class PinningProbe:
    """Stands where EmbedStage stands (same actor options); reports what Ray gave it."""

    def seen(self) -> dict[str, object]:
        import ray

        return {"pid": os.getpid(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def embed_step(workers: int, gpus: float) -> Any:
    """The embed step (a ``MapBatches`` of the logical plan) of the pipeline's dataset for this layout."""
    from cluster.pipeline import build_dataset
    from cluster.stages.embed import EmbedStage
    from jobs.config import load_config

    cfg = load_config(None, ["source.uri=/nowhere/docs", "model.name=tiny", "milvus.uri=/nowhere/m.db",
                             f"cluster.workers={workers}", f"cluster.gpus_per_worker={gpus}",
                             "cluster.cpus_per_worker=0.5"], env={})
    ds = build_dataset(cfg, [{"path": "/nowhere/docs/part-0.parquet"}])
    op, steps = ds._logical_plan.dag, []
    while op is not None:
        steps.append(op)
        op = op.input_dependencies[0] if op.input_dependencies else None
    embed = [s for s in steps if getattr(s, "fn", None) is EmbedStage]
    assert len(embed) == 1, f"the pipeline has {len(embed)} EmbedStage steps: {[s.name for s in steps]}"
    return embed[0]


def placements(workers: int, gpus: float) -> dict[str, object]:
    """Start the pool's actors with the embed step's options, all at once, and ask each what it got.

    Ray Data's ``ActorPoolStrategy`` creates its actors with exactly these remote arguments
    (``num_gpus`` / ``num_cpus``); plain actors keep this check to a few seconds.
    """
    import ray

    step = embed_step(workers, gpus)
    compute, remote_args = step.compute, dict(step.ray_remote_args or {})
    pool = {"strategy": type(compute).__name__, "min_size": getattr(compute, "min_size", None),
            "max_size": getattr(compute, "max_size", None)}
    actor = ray.remote(**remote_args)(PinningProbe) if remote_args else ray.remote(PinningProbe)
    actors = [actor.remote() for _ in range(workers)]
    seen = ray.get([a.seen.remote() for a in actors])
    for a in actors:
        ray.kill(a)
    return {"pool": pool, "remote_args": {k: v for k, v in remote_args.items() if k in ("num_gpus", "num_cpus")},
            "actors": seen}


def main() -> None:
    import ray

    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        print(json.dumps({"one_per_gpu": placements(2, 1.0), "half_gpu": placements(4, 0.5)}))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
