"""The job's one config tree: YAML + ``--set`` overrides + environment, validated before any work.

Every section is a frozen dataclass owned by the package that uses it; this module only
assembles them, checks types and keys, and reads the environment (the only place that does).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from cluster.settings import (
    CheckpointConfig,
    ClusterConfig,
    ErrorsConfig,
    MilvusConfig,
    ReindexConfig,
    SourceConfig,
)
from embedder.settings import BatchConfig, ChunkingConfig, ModelConfig, doc

SECRET_NAMES = {"token", "secret", "password", "key", "aws_access_key_id", "aws_secret_access_key",
                "aws_session_token", "api_key", "access_key", "secret_key", "session_token"}


class ConfigError(ValueError):
    """The config is invalid; the message says which key and what is accepted."""


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    """Everything one run needs."""

    source: SourceConfig = doc("Documents to embed.", required=True)
    model: ModelConfig = doc("Embedding model.", required=True)
    batch: BatchConfig = doc("Forward-pass batching.", default_factory=BatchConfig)
    chunking: ChunkingConfig = doc("Long-document policy.", default_factory=ChunkingConfig)
    cluster: ClusterConfig = doc("Ray layout.", default_factory=ClusterConfig)
    milvus: MilvusConfig = doc("Vector store.", default_factory=MilvusConfig)
    checkpoint: CheckpointConfig = doc("Resume and incremental state.", default_factory=CheckpointConfig)
    errors: ErrorsConfig = doc("Rejected input.", default_factory=ErrorsConfig)
    reindex: ReindexConfig = doc("Backfill re-indexing (jobs.reindex).", default_factory=ReindexConfig)
    mode: Literal["full", "incremental"] = doc(
        "full: read every shard (an interrupted run resumes from the manifest; after a finished run the next "
        "one starts over) and embed every document whose exact version the collection does not hold; "
        "incremental: only shards that are new or changed since earlier runs, and in them only new or changed "
        "documents.", "full")
    delete_missing: bool = doc("incremental: delete from the collection the documents whose shard disappeared "
                               "or that vanished from a changed shard, once every shard of the run is done.", False)
    delete_missing_max_ratio: float = doc("delete_missing refuses (exit 2) to delete more than this share of the "
                                          "documents the manifest knows in one run (a listing that shrank by "
                                          "mistake, a wrong prefix); raise it for a deliberate mass deletion.", 0.1)
    log_every_s: float = doc("Seconds between progress lines.", 10.0)


def load_config(path: str | Path | None, overrides: Sequence[str] = (),
                env: dict[str, str] | None = None) -> JobConfig:
    """Read YAML, apply ``key.sub=value`` overrides and environment secrets, validate."""
    env = dict(os.environ) if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError as e:
            raise ConfigError(f"config file {path} not found") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    milvus = raw.get("milvus")
    token = env.get("MILVUS_TOKEN")
    if not token and env.get("MILVUS_TOKEN_FILE"):  # a mounted secret (Kubernetes, Docker)
        try:
            token = Path(env["MILVUS_TOKEN_FILE"]).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"MILVUS_TOKEN_FILE {env['MILVUS_TOKEN_FILE']} cannot be read: {e.strerror}") from e
    if token and not (isinstance(milvus, dict) and milvus.get("token")):
        raw.setdefault("milvus", {})
        if isinstance(raw["milvus"], dict):
            raw["milvus"]["token"] = token
    cfg = build(JobConfig, raw, "")
    if cfg.delete_missing and cfg.mode != "incremental":
        raise ConfigError("delete_missing needs mode: incremental")
    if not 0 <= cfg.delete_missing_max_ratio <= 1:
        raise ConfigError(f"delete_missing_max_ratio must be in 0..1, got {cfg.delete_missing_max_ratio}")
    if cfg.milvus.mode == "bulk_import" and cfg.mode == "incremental":
        raise ConfigError("milvus.mode bulk_import inserts (it cannot replace changed documents): use it for "
                          "full loads into a new collection, and mode: incremental with milvus.mode upsert")
    if cfg.mode == "incremental" and not cfg.checkpoint.uri:
        raise ConfigError("mode: incremental needs checkpoint.uri (where earlier runs are recorded)")
    return cfg


def apply_override(raw: dict[str, Any], item: str) -> None:
    """``a.b=value``: the value is parsed as YAML (numbers, booleans, lists); empty means null."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. --set source.uri=s3://bucket/docs")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(value) if value.strip() else None


def build(cls: type, raw: Any, where: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping of keys, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(_join(where, k) for k in unknown)}; "
                          f"valid keys{' of ' + where if where else ''}: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    values = {key: coerce(value, hints[key], _join(where, key)) for key, value in raw.items()}
    missing = [k for k, f in fields.items()
               if k not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    for key in list(missing):
        if dataclasses.is_dataclass(hints[key]):
            values[key] = build(hints[key], {}, _join(where, key))
            missing.remove(key)
    if missing:
        raise ConfigError(f"missing required key(s): {', '.join(_join(where, k) for k in missing)}")
    try:
        return cls(**values)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return coerce(value, option, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} is not valid; expected {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected empty")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, typing.get_args(tp)))}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is object or (isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(t) for t in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return " or ".join(map(repr, typing.get_args(tp)))
    if tp is type(None):
        return "empty"
    return getattr(tp, "__name__", str(tp))


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def redact(value: Any) -> Any:
    """A plain copy of a config with secrets replaced by '***', for logs and summaries."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: ("***" if v and _is_secret(str(k)) else redact(v)) for k, v in value.items()}
    if isinstance(value, str) and "://" in value and "@" in value:  # https://user:password@host
        from cluster.milvus.errors import redact as strip_credentials

        return strip_credentials(value)
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _is_secret(name: str) -> bool:
    name = name.lower()
    return name in SECRET_NAMES or name.endswith(("_secret", "_password", "_token", "_api_key"))


def describe(cls: type = JobConfig, where: str = "") -> list[str]:
    """One line per key with its default and documentation (``--help-config``)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = _join(where, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            lines.append(f"{key}:  {f.metadata.get('doc', '')}")
            lines.extend(describe(hints[f.name], key))
            continue
        if f.default is not dataclasses.MISSING:
            default = "" if f.default is None else repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        lines.append(f"  {key} [{_type_name(hints[f.name])}] = {default}\n      {f.metadata.get('doc', '')}")
    return lines
