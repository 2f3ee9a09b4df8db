"""Place the stages on Ray Data: read and tokenize as CPU tasks, embed in a GPU actor pool.

Nothing runs until the dataset is iterated (by ``cluster.driver``). Streaming execution
keeps a bounded number of blocks in flight, so memory does not grow with the corpus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.source import Shard
from cluster.stages.embed import EmbedStage
from cluster.stages.read import read_shards, shard_rows
from cluster.stages.tokenize import tokenize_docs

if TYPE_CHECKING:
    import ray.data

    from jobs.config import JobConfig


def build_dataset(cfg: JobConfig, shards: list[Shard]) -> ray.data.Dataset:
    """The lazy read -> tokenize -> embed dataset over ``shards``."""
    import ray.data

    ds = ray.data.from_items(shard_rows(shards), override_num_blocks=max(1, len(shards)))
    ds = ds.map_batches(read_shards, fn_kwargs={"source": cfg.source}, batch_size=1, batch_format="pyarrow",
                        num_cpus=0.5)
    ds = ds.map_batches(tokenize_docs, fn_kwargs={"model": cfg.model, "chunking": cfg.chunking,
                                                  "lang_column": cfg.source.lang_column},
                        batch_format="pyarrow", num_cpus=0.5)
    ds = ds.map_batches(
        EmbedStage,
        fn_constructor_kwargs={"model": cfg.model, "batch": cfg.batch, "chunking": cfg.chunking,
                               "inject_exit": cfg.cluster.inject_actor_exit},
        compute=ray.data.ActorPoolStrategy(size=cfg.cluster.workers),
        num_gpus=cfg.cluster.gpus_per_worker or None,
        num_cpus=cfg.cluster.cpus_per_worker,
        batch_size=cfg.cluster.rows_per_task,
        batch_format="pyarrow",
    )
    return ds
