"""Settings of the distributed side: where documents come from, how Ray runs, where vectors go."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cluster.contract import RESERVED
from embedder.settings import choice, doc

SourceFormat = Literal["auto", "parquet", "jsonl", "jsonl.gz"]


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """The documents to embed."""

    uri: str = doc("Local folder, file, glob, or s3://bucket/prefix of document shards.", required=True)
    format: SourceFormat = doc("parquet, jsonl or jsonl.gz; auto = from each file's extension.", "auto")
    id_column: str = doc("Column holding the document id (unique per document).", "id")
    text_column: str = doc("Column holding the text to embed.", "text")
    metadata_columns: list[str] = doc("Extra columns copied into Milvus (scalar values: str, int, float, bool).",
                                      default_factory=list)
    lang_column: str | None = doc("Metadata column with each document's language, for the per-language "
                                  "statistics of the run summary. Empty = group by detected dominant script.")
    storage_options: dict[str, object] = doc("s3fs options: endpoint_url, key, secret, ... "
                                             "Credentials may come from AWS_* environment variables instead.",
                                             default_factory=dict, secret=True)
    read_batch_rows: int = doc("Rows per record batch read from a shard (bounds memory).", 1024)

    def __post_init__(self) -> None:
        if not self.uri:
            raise ValueError("source.uri is required: a local path, glob, or s3://bucket/prefix")
        choice("source.format", self.format, ("auto", "parquet", "jsonl", "jsonl.gz"))
        if self.lang_column and self.lang_column not in self.metadata_columns:
            raise ValueError(f"source.lang_column {self.lang_column!r} must also be listed in source.metadata_columns")
        if self.read_batch_rows < 1:
            raise ValueError("source.read_batch_rows must be >= 1")
        clash = RESERVED.intersection(self.metadata_columns)
        if clash:
            raise ValueError(f"source.metadata_columns: {sorted(clash)} clash with reserved output fields; rename them")


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """How the Ray pipeline is laid out."""

    address: str | None = doc("Ray address to join. Empty = RAY_ADDRESS, the job's cluster, or a new local Ray.")
    workers: int = doc("Number of embedding actors (each holds one model copy).", 1)
    gpus_per_worker: float = doc("GPUs requested by each embedding actor (0 = run on CPU).", 0.0)
    cpus_per_worker: float = doc("CPUs requested by each embedding actor.", 1.0)
    rows_per_task: int = doc("Chunks handed to an embedding actor at a time; the actor packs them "
                             "into token-budget batches.", 512)
    read_task_mb: int = doc("Small shards are read together, consecutive in listing order, up to this many MB "
                            "per read task (never fewer tasks than 4 per CPU of the cluster while the corpus "
                            "allows); a larger shard is one task of its own.", 128)
    writers: int | None = doc("Writer actors (each upserts into Milvus or writes import files). Empty = one per "
                              "embedding actor (cluster.workers).")
    cpus_per_writer: float = doc("CPUs each writer reserves. 0 (default) reserves none, so writers can never "
                                 "starve the read tasks on small nodes; set it on large clusters to spread them.",
                                 0.0)
    ship_code: bool = doc("When the driver joins a running cluster from a checkout (not under ray job submit): "
                          "ship the checkout to the workers as Ray's working_dir. false: the project is installed "
                          "(or on a shared filesystem) on every node.", True)
    writer_max_restarts: int = doc("Times Ray may restart one writer actor that died (its unconfirmed shards are "
                                   "redone by the next run); past that the run fails (exit 1).", 3)
    writer_start_timeout_s: float = doc("Longest wait for the writer actors to start; a writer that cannot be "
                                        "scheduled (no node with its resources) fails the run with a message "
                                        "naming what it asked for.", 300.0)
    inject_actor_exit: str | None = doc("Fault injection for tests: a marker file path; the first embed actor to "
                                        "find it missing creates it and exits in the middle of its second batch.")
    inject_batch_delay_s: float = doc("Fault injection for tests: seconds each embed actor waits (sleeping, no CPU) "
                                      "before each batch, a slow model that leaves the CPU to others.", 0.0)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("cluster.workers must be >= 1")
        if self.gpus_per_worker < 0 or self.cpus_per_worker < 0 or self.cpus_per_writer < 0:
            raise ValueError("cluster.gpus_per_worker, cluster.cpus_per_worker and cluster.cpus_per_writer must be "
                             ">= 0")
        if self.inject_batch_delay_s < 0:
            raise ValueError("cluster.inject_batch_delay_s must be >= 0")
        if self.writers is not None and self.writers < 1:
            raise ValueError("cluster.writers must be >= 1 (or empty: one per worker)")
        if self.read_task_mb < 1:
            raise ValueError("cluster.read_task_mb must be >= 1")
        if self.writer_max_restarts < 0 or self.writer_start_timeout_s <= 0:
            raise ValueError("cluster.writer_max_restarts must be >= 0 and cluster.writer_start_timeout_s > 0")

    @property
    def writer_count(self) -> int:
        """Writer actors of the run."""
        return self.writers or self.workers


@dataclass(frozen=True, kw_only=True)
class MilvusConfig:
    """Where vectors are written."""

    uri: str = doc("A local path ending in .db (milvus-lite: the run starts its own milvus-lite server on that "
                   "folder) or http(s)://host:port of a Milvus server.", "./milvus.db")
    collection: str = doc("Collection the job writes to (created when missing).", "documents")
    alias: str | None = doc("Alias that readers query (jobs.search uses it when set); jobs.reindex builds a new "
                            "collection and points this alias at it.")
    token: str | None = doc("Milvus token ('user:password' or API key); prefer the MILVUS_TOKEN environment variable.",
                            secret=True)
    db_name: str | None = doc("Milvus database on a server. Empty = default.")
    store_text: bool = doc("Store the chunk text in a VARCHAR field `text`.", True)
    text_max_length: int = doc("VARCHAR capacity (bytes) of the `text` field.", 65535)
    dense_type: Literal["float32", "float16", "bfloat16", "int8", "binary"] = doc(
        "How dense vectors are stored: float32; float16 / bfloat16 (half the bytes; Milvus >= 2.4); int8 (a "
        "quarter; one scale, milvus.int8_scale, kept with the collection; Milvus >= 2.6); "
        "binary (sign bits, 1/32; dim a multiple of 8, Hamming distance). milvus-lite stores float32 only. "
        "python -m jobs.evaluate audits what each costs in recall.", "float32")
    int8_scale: float | None = doc("dense_type int8: vectors are stored as round(x * scale), clipped to +-127. "
                                   "jobs.evaluate prints the scale calibrated on your pairs; it is recorded with "
                                   "the collection at creation (later runs use the recorded one).")
    mode: Literal["upsert", "bulk_import"] = doc("upsert (rows over the API) or bulk_import (parquet files "
                                                 "imported by a Milvus server).", "upsert")
    write_batch_rows: int = doc("Most rows in one upsert request (requests also stay under 64 MB).", 1000)
    outage_s: float = doc("How long a Milvus request that fails for a passing reason (server down, restarting, "
                          "overloaded) is retried, with backoff from 0.5 s doubling to 15 s, before the run fails "
                          "(exit 1, resumable).", 300.0)
    write_journal: str | None = doc("Audit: a local folder where every process appends, per upsert and delete "
                                    "request, the primary keys it sent (JSON lines). For tests and incident "
                                    "analysis, not for production volumes.")
    max_request_bytes: int = doc("Size limit of one upsert request.", 48 * 1024 * 1024)
    bulk_uri: str | None = doc("bulk_import: s3://bucket/prefix the Milvus server can read for import files.")
    bulk_storage_options: dict[str, object] = doc("bulk_import: s3 options (endpoint_url, key, secret) for bulk_uri.",
                                                  default_factory=dict, secret=True)
    import_uri: str | None = doc("bulk_import: base url of the server's REST API (import jobs). Empty = milvus.uri "
                                 "(Milvus serves REST on its gRPC port).")
    import_group_shards: int = doc("bulk_import: an import job is submitted each time this many shards (in listing "
                                   "order) are written; their shards are recorded once it completed.", 64)
    import_file_mb: int = doc("bulk_import: size at which a writer starts a new import file (Milvus takes files "
                              "up to 16 GB, at most 1024 per import job).", 1024)
    import_timeout_s: float = doc("bulk_import: longest wait for one import job.", 6 * 3600.0)
    import_poll_s: float = doc("bulk_import: seconds between checks of the import jobs in flight.", 10.0)
    import_max_running_jobs: int = doc("bulk_import: most import jobs of this run running on the server at once "
                                       "(1..1024: Milvus runs at most dataCoord.maxImportJobNum, 1024, of all its "
                                       "clients' jobs and refuses more); further groups wait for a slot.", 64)

    def __post_init__(self) -> None:
        choice("milvus.mode", self.mode, ("upsert", "bulk_import"))
        choice("milvus.dense_type", self.dense_type, ("float32", "float16", "bfloat16", "int8", "binary"))
        if self.int8_scale is not None and not self.int8_scale > 0:
            raise ValueError(f"milvus.int8_scale must be > 0, got {self.int8_scale}")
        if not self.collection or not self.collection.replace("_", "a").isalnum() or self.collection[0].isdigit():
            raise ValueError(f"milvus.collection {self.collection!r}: use letters, digits and '_' "
                             "(not starting with a digit)")
        if self.is_lite and not self.uri.endswith(".db"):
            raise ValueError(f"milvus.uri {self.uri!r}: a milvus-lite path must end in .db "
                             "(or use http(s)://host:port for a server)")
        if not 1 <= self.text_max_length <= 65535:
            raise ValueError("milvus.text_max_length must be between 1 and 65535")
        if self.mode == "bulk_import" and self.is_lite:
            raise ValueError("milvus.mode bulk_import needs a Milvus server (milvus-lite has no import); "
                             "use mode: upsert with a local path")
        if self.mode == "bulk_import" and not self.bulk_uri:
            raise ValueError("milvus.mode bulk_import needs milvus.bulk_uri (s3://bucket/prefix the server can read)")
        if self.outage_s < 0:
            raise ValueError("milvus.outage_s must be >= 0")
        if self.import_group_shards < 1:
            raise ValueError("milvus.import_group_shards must be >= 1")
        if not 1 <= self.import_max_running_jobs <= 1024:
            raise ValueError("milvus.import_max_running_jobs must be between 1 and 1024 (Milvus runs at most 1024 "
                             "import jobs at once)")
        if not 1 <= self.import_file_mb <= 16 * 1024:
            raise ValueError("milvus.import_file_mb must be between 1 and 16384 (Milvus' limit per file is 16 GB)")

    @property
    def is_lite(self) -> bool:
        """True when uri is a local file path (milvus-lite)."""
        return not self.uri.startswith(("http://", "https://", "tcp://", "grpc://"))


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """The per-shard manifest that makes runs resumable and incremental."""

    uri: str | None = doc("Folder or s3://bucket/prefix of the manifest, the shards' id files and the lease. A "
                          "shard is recorded only after its rows are written; a re-run skips recorded shards whose "
                          "size and etag/mtime are unchanged. On a Ray cluster use s3:// (read tasks on every node "
                          "write here). Empty = no manifest, no lease, no cross-shard duplicate count (re-runs "
                          "redo everything; upserts keep rows unique).", "./embed-state/checkpoints")
    storage_options: dict[str, object] = doc("s3fs options for an s3:// manifest (default: source.storage_options).",
                                             default_factory=dict, secret=True)
    record_every_s: float = doc("Seconds between manifest updates (finished shards are recorded in groups).", 5.0)
    lease_ttl_s: float = doc("A run holds a lease on its target collection (under checkpoint.uri/leases) and renews "
                             "it every ttl/4 seconds; a lease without heartbeat for this long is taken over by the "
                             "next run.", 60.0)

    def __post_init__(self) -> None:
        if self.record_every_s <= 0 or self.lease_ttl_s < 5:
            raise ValueError("checkpoint.record_every_s must be > 0 and checkpoint.lease_ttl_s >= 5")


@dataclass(frozen=True, kw_only=True)
class ErrorsConfig:
    """What happens to input that cannot be embedded."""

    on_error: Literal["skip", "fail"] = doc("skip: report rejected documents/shards and go on; fail: stop the run "
                                            "at the first one (the manifest keeps finished shards).", "skip")
    max_error_ratio: float = doc("Fail the run when more than this share of documents is rejected (checked "
                                 "after 1000 documents and at the end).", 0.1)
    uri: str | None = doc("Folder or s3://bucket/prefix for the dead-letter jsonl files (shard, row, doc_id, "
                          "reason). Empty = log only.", "./embed-state/errors")

    def __post_init__(self) -> None:
        choice("errors.on_error", self.on_error, ("skip", "fail"))
        if not 0 <= self.max_error_ratio <= 1:
            raise ValueError("errors.max_error_ratio must be between 0 and 1")


@dataclass(frozen=True, kw_only=True)
class ReindexConfig:
    """Backfill re-indexing into a new collection behind ``milvus.alias``."""

    retention: int = doc("Collections of this alias to keep, the live one included (at least 2, so that "
                         "--rollback has a target); older ones are dropped after a successful swap.", 2)
    validate_sample: int = doc("Documents re-embedded after the build that must find themselves as the top hit "
                               "before the alias is moved.", 20)

    def __post_init__(self) -> None:
        if self.retention < 2:
            raise ValueError("reindex.retention must be >= 2 (the live collection and the rollback target)")
        if self.validate_sample < 0:
            raise ValueError("reindex.validate_sample must be >= 0")
