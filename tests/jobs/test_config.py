"""The config tree: validation messages, overrides, environment secrets, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.config import ConfigError, describe, load_config, redact

BASE = ["source.uri=/data/docs", "model.name=/models/e5"]


def test_overrides_parse_yaml_values() -> None:
    cfg = load_config(None, [*BASE, "model.dense_dim=256", "model.sparse=false", "source.metadata_columns=[lang]",
                             "cluster.gpus_per_worker=1", "model.query_prefix="])
    assert cfg.model.dense_dim == 256 and cfg.model.sparse is False and cfg.source.metadata_columns == ["lang"]
    assert cfg.cluster.gpus_per_worker == 1.0 and cfg.model.query_prefix is None


@pytest.mark.parametrize(("items", "message"), [
    (["model.name=/m"], "missing required key(s): source.uri"),
    ([*BASE, "model.colour=red"], "unknown key(s) model.colour; valid keys of model: "),
    ([*BASE, "nonsense=1"], "unknown key(s) nonsense; valid keys: batch"),
    ([*BASE, "model.precision=fp8"], "model.precision: 'fp8' is not one of 'auto', 'fp32', 'fp16', 'bf16'"),
    ([*BASE, "cluster.workers=two"], "cluster.workers: expected int, got 'two'"),
    ([*BASE, "model.sparse=maybe"], "model.sparse: 'maybe' is not valid; expected bool or 'auto'"),
    ([*BASE, "model.dense_dim=0"], "model.dense_dim must be a positive integer"),
    ([*BASE, "milvus.uri=/tmp/milvus"], "a milvus-lite path must end in .db"),
    ([*BASE, "source.metadata_columns=[pk]"], "clash with reserved output fields"),
    ([*BASE, "source.lang_column=lang"], "must also be listed in source.metadata_columns"),
    ([*BASE, "mode=incremental", "checkpoint.uri="], "mode: incremental needs checkpoint.uri"),
    ([*BASE, "delete_missing=true"], "delete_missing needs mode: incremental"),
    ([*BASE, "milvus.uri=http://m:19530", "milvus.mode=bulk_import", "milvus.bulk_uri=s3://b/p", "mode=incremental"],
     "milvus.mode bulk_import inserts"),
    ([*BASE, "milvus.mode=bulk_import", "milvus.bulk_uri=s3://b/p"], "bulk_import needs a Milvus server"),
    (["source.uri"], "expected key.path=value"),
    ([*BASE, "cluster.writers=0"], "cluster.writers must be >= 1"),
    ([*BASE, "milvus.import_file_mb=20000"], "Milvus' limit per file is 16 GB"),
    ([*BASE, "checkpoint.lease_ttl_s=1"], "checkpoint.lease_ttl_s >= 5"),
])
def test_invalid_configs_name_the_key_and_the_fix(items: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, items, env={})
    assert message in str(info.value)


def test_yaml_file_and_errors(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text("source: {uri: /d}\nmodel: {name: /m, dense_dim: 128}\n")
    assert load_config(tmp_path / "ok.yaml", ["model.dense_dim=64"], env={}).model.dense_dim == 64
    (tmp_path / "bad.yaml").write_text("source: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml", env={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml", env={})


def test_milvus_token_from_environment_or_mounted_file(tmp_path: Path) -> None:
    assert load_config(None, BASE, env={"MILVUS_TOKEN": "root:abc"}).milvus.token == "root:abc"
    (tmp_path / "token").write_text("root:from-file\n")
    assert load_config(None, BASE, env={"MILVUS_TOKEN_FILE": str(tmp_path / "token")}).milvus.token == "root:from-file"
    with pytest.raises(ConfigError, match="MILVUS_TOKEN_FILE"):
        load_config(None, BASE, env={"MILVUS_TOKEN_FILE": str(tmp_path / "nope")})


def test_redaction_masks_secrets_only() -> None:
    cfg = load_config(None, [*BASE, "milvus.uri=https://root:Pa55word@milvus:19530", "milvus.token=tok-123",
                             "source.storage_options={key: AKIA1, secret: s3cr3t, endpoint_url: http://s3:9000}"],
                      env={})
    shown = repr(redact(cfg))
    for secret in ("Pa55word", "tok-123", "s3cr3t", "AKIA1"):
        assert secret not in shown
    assert "'max_tokens': 16384" in shown and "http://s3:9000" in shown
    assert "tok-123" not in repr(cfg) and "s3cr3t" not in repr(cfg)  # dataclass reprs hide them too


def test_every_key_is_documented() -> None:
    lines = describe()
    keys = [line.split()[0] for line in lines if line.startswith("  ")]
    assert len(keys) > 40 and all("\n      " in line and line.split("\n      ")[1].strip()
                                  for line in lines if line.startswith("  "))


CONFIGS = Path(__file__).parents[2] / "jobs" / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_are_valid(name: str) -> None:
    cfg = load_config(CONFIGS / name, env={})
    assert cfg.source.uri and cfg.model.name
