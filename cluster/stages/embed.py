"""Stage 3 (actor pool, one model copy per actor, pinned to GPUs by Ray's resource request)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa

from cluster import contract as c
from cluster.settings import ClusterConfig
from cluster.stages.arrow import fixed_list, is_payload, list_array
from embedder.settings import BatchConfig, ChunkingConfig, ModelConfig

log = logging.getLogger(__name__)
PADDED_LEN = c.PADDED_LEN


class EmbedStage:
    """Loads the encoder once in ``__init__``; ``__call__`` embeds a table of chunks.

    Adds ``dense``, ``sparse_indices``, ``sparse_values``, ``padded_len`` and ``_fp32_reruns``,
    drops ``input_ids``. Rows with an error (or markers) pass through with null vectors; a chunk
    whose vector stays non-finite in fp32 gets an error instead of a vector. On CPU the actor
    sets torch's threads to the node's cores (``embedder/threads.py``), not Ray's OMP_NUM_THREADS.
    """

    def __init__(self, model: ModelConfig, batch: BatchConfig, chunking: ChunkingConfig,
                 inject_exit: str | None = None, inject_delay_s: float = 0.0) -> None:
        # heavy: torch + transformers, only inside the actor
        from embedder.encoder import Encoder
        from embedder.precision import resolve_device
        from embedder.threads import use_cpu_threads

        if resolve_device(model) == "cpu":
            use_cpu_threads(model.cpu_threads)
        self.encoder = Encoder(model, batch, chunking)
        self.calls = 0
        self.inject_exit = inject_exit
        self.inject_delay_s = inject_delay_s

    @staticmethod
    def placement(cluster: ClusterConfig) -> dict[str, Any]:
        """The ``map_batches`` arguments that place the actors: pool size, GPUs and CPUs per actor.

        Ray pins each actor to ``gpus_per_worker`` GPUs (``CUDA_VISIBLE_DEVICES`` in the actor);
        a fraction shares a GPU (0.5: two actors per GPU). Tested with fake GPUs in
        tests/cluster/stages/test_gpu_pinning.py.
        """
        import ray.data

        return {"compute": ray.data.ActorPoolStrategy(size=cluster.workers),
                "num_gpus": cluster.gpus_per_worker or None, "num_cpus": cluster.cpus_per_worker}

    def __call__(self, table: pa.Table) -> pa.Table:
        from embedder.token_rows import TokenRows

        c.require_columns("embed", table.column_names, c.TOKENIZED_COLUMNS)
        self.calls += 1
        if self.inject_exit and self.calls == 2 and not os.path.exists(self.inject_exit):
            open(self.inject_exit, "w").close()
            log.error("fault injection: embed actor exits in the middle of a batch")
            os._exit(1)
        if self.inject_delay_s:
            time.sleep(self.inject_delay_s)  # fault injection: a slow model (tests)
        payload = np.flatnonzero(is_payload(table))
        col = table.column(c.INPUT_IDS).combine_chunks()
        # values/offsets as stored (zero copy); offsets index values even for slices and null rows
        rows = TokenRows(flat=col.values.to_numpy(zero_copy_only=False),
                         offsets=col.offsets.to_numpy().astype(np.int64)).take(payload)
        enc = self.encoder
        emb = enc.embed_rows(rows)
        n = table.num_rows
        dense = np.zeros((n, enc.dim), dtype=np.float32)
        dense[payload] = emb.dense
        valid = np.zeros(n, dtype=bool)
        valid[payload] = True
        errors = table.column(c.ERROR)
        if emb.errors:
            errors = errors.to_pylist()
            for k, reason in emb.errors.items():
                valid[payload[k]] = False
                errors[payload[k]] = reason
            errors = pa.array(errors, pa.string())
        padded = np.zeros(n, dtype=np.int32)
        padded[payload] = emb.widths
        reruns = np.zeros(n, dtype=np.int32)
        reruns[:1] = emb.fp32_reruns
        out = table.drop_columns([c.INPUT_IDS])
        out = out.set_column(out.schema.get_field_index(c.ERROR), c.ERROR, errors)
        out = out.append_column(c.DENSE, fixed_list(dense, valid)).append_column(PADDED_LEN, pa.array(padded))
        if emb.sparse is not None:
            lengths = np.zeros(n, dtype=np.int64)
            lengths[payload] = np.diff(emb.sparse.offsets)
            lengths[~valid] = 0
            keep = np.repeat(valid[payload], np.diff(emb.sparse.offsets))
            sp_offsets = np.concatenate([[0], np.cumsum(lengths)])
            out = out.append_column(c.SPARSE_INDICES, list_array(sp_offsets, emb.sparse.indices[keep], valid))
            out = out.append_column(c.SPARSE_VALUES, list_array(sp_offsets, emb.sparse.values[keep], valid))
        return out.append_column(c.FP32_RERUNS, pa.array(reruns))
