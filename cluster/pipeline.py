"""Place the stages on Ray Data: read+tokenize as CPU tasks (one shard, or several small ones, each), embed in a
GPU actor pool.

Nothing runs until the dataset is iterated (by ``cluster.run``, which hands the embedded blocks to
the writer actors of :mod:`cluster.writers` without fetching them). Streaming execution
keeps a bounded number of blocks in flight, so memory does not grow with the corpus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cluster.stages.embed import EmbedStage
from cluster.stages.read import IdsSink, group_items, read_and_tokenize

if TYPE_CHECKING:
    import ray.data

    from jobs.config import JobConfig


def build_dataset(cfg: JobConfig, items: list[dict[str, object]], ids: IdsSink | None = None,
                  progress: Any = None, metadata_types: dict[str, Any] | None = None,
                  change: Any = None) -> ray.data.Dataset:
    """The lazy read+tokenize -> embed dataset over shard ``items`` (:func:`cluster.stages.read.shard_items`).

    Args:
        cfg: The job's config.
        items: One item per shard (path, format, size, version, where its id files go).
        ids: Where the read tasks write the shards' id files (None: no manifest).
        progress: A :class:`cluster.progress.ReadProgress` the read tasks report to.
        metadata_types: The collection's metadata field types (arrow); read tasks cast to them.
        change: A :class:`cluster.stages.unchanged.ChangeCheck`: read tasks skip unchanged documents.
    """
    import ray.data

    cpus = float(ray.cluster_resources().get("CPU", 1.0)) if ray.is_initialized() else 1.0
    rows = group_items(items, max_bytes=cfg.cluster.read_task_mb << 20, cpus=cpus)
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    ds = ds.map_batches(read_and_tokenize, fn_kwargs={"source": cfg.source, "model": cfg.model,
                                                      "chunking": cfg.chunking, "lang_column": cfg.source.lang_column,
                                                      "ids": ids, "progress": progress,
                                                      "metadata_types": metadata_types, "change": change},
                        batch_size=1, batch_format="pyarrow", num_cpus=0.5)
    ds = ds.map_batches(
        EmbedStage,
        fn_constructor_kwargs={"model": cfg.model, "batch": cfg.batch, "chunking": cfg.chunking,
                               "inject_exit": cfg.cluster.inject_actor_exit,
                               "inject_delay_s": cfg.cluster.inject_batch_delay_s},
        **EmbedStage.placement(cfg.cluster),
        batch_size=cfg.cluster.rows_per_task,
        batch_format="pyarrow",
    )
    return ds
