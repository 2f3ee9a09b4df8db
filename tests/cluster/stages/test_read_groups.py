"""Small shards are read together (cluster.stages.read.group_items): fewer read tasks, every shard once, in order."""

from __future__ import annotations

import json

from cluster.stages.read import group_items


def items(sizes: list[int]) -> list[dict[str, object]]:
    return [{"path": f"s3://b/part-{i:06d}.parquet", "size": n} for i, n in enumerate(sizes)]


def unpack(rows: list[dict[str, str]]) -> list[list[str]]:
    return [[i["path"] for i in json.loads(r["shards"])] for r in rows]


def test_a_million_tiny_shards_become_bounded_tasks_and_a_large_shard_stays_alone() -> None:
    many = items([10_000] * 100_000 + [500 << 20] + [10_000] * 100_000)  # 2 GB of tiny files and one of 500 MB
    rows = group_items(many, max_bytes=128 << 20, cpus=64)
    groups = unpack(rows)
    flat = [p for g in groups for p in g]
    assert flat == [str(i["path"]) for i in many]  # every shard once, listing order kept
    assert len(rows) < 1000 and len(rows) >= 4 * 64 // 2
    sizes = {str(i["path"]): int(i["size"]) for i in many}  # type: ignore[call-overload]
    assert any(g == ["s3://b/part-100000.parquet"] for g in groups)
    target = min(128 << 20, sum(sizes.values()) // (4 * 64))
    assert all(len(g) == 1 or sum(sizes[p] for p in g) <= target for g in groups)


def test_a_small_corpus_still_spreads_over_every_cpu() -> None:
    rows = group_items(items([1_000] * 40), max_bytes=128 << 20, cpus=2)
    assert len(rows) == 8  # 4 tasks per CPU: 5 shards each
    assert group_items(items([5_000_000] * 3), max_bytes=1 << 20, cpus=2) == [
        {"shards": json.dumps([i])} for i in items([5_000_000] * 3)]
    assert group_items([], max_bytes=1, cpus=1) == []
    assert unpack(group_items([{"path": "x"}], max_bytes=1, cpus=1)) == [["x"]]  # no size known: one task
