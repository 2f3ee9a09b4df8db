"""The id pass's set operations on Arrow arrays against plain Python sets: the k-way merge in levels (also as
parallel jobs), the key-range shortcut, the streamed delete candidates, and the max_delete count."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from fsspec.implementations.local import LocalFileSystem

from cluster.manifest import ids
from cluster.manifest.ids import MergeJob, distinct_count, merge_group, merged, missing, shard_ids, write_table

UNIVERSE = [f"id-{i}" for i in range(2000)] + ['q"uote', "new\nline", "ctrl\x01", "ünï", "日本", "", "\x00z", "~~"]


def _files(tmp_path: Path, rng: random.Random, n: int, prefix: str = "f") -> tuple[list[str], list[dict[str, int]]]:
    """``n`` id files of random subsets of UNIVERSE (some empty), with random chunk counts."""
    fs, paths, contents = LocalFileSystem(), [], []
    for k in range(n):
        picked = rng.sample(UNIVERSE, rng.choice([0, 1, rng.randint(0, 300)]))
        counts = {i: rng.randint(0, 5) for i in picked}
        table, _ = shard_ids(pa.array(list(counts), pa.string()), np.array(list(counts.values()), np.int32))
        path = f"{tmp_path}/{prefix}{k}.parquet"
        write_table(fs, path, table)
        paths.append(path)
        contents.append(counts)
    return paths, contents


class _Threads:
    """A level runner like the Ray one: the jobs of a level in parallel, here in threads."""

    def __init__(self, parallel: int) -> None:
        self.parallel, self.levels = parallel, []

    def __call__(self, jobs: list[MergeJob]) -> list[tuple[int, int]]:
        self.levels.append(len(jobs))
        with ThreadPoolExecutor(self.parallel) as pool:
            return list(pool.map(lambda job: merge_group(LocalFileSystem(), job), jobs))


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("parallel", [1, 3])
def test_the_arrow_merge_counts_and_finds_repeats_like_python_sets(tmp_path: Path, seed: int, parallel: int) -> None:
    rng = random.Random(seed)
    paths, contents = _files(tmp_path, rng, 20)
    sets = [set(x) for x in contents]
    everything = set().union(*sets)
    in_several = {i for i in everything if sum(i in s for s in sets) > 1}
    run = _Threads(parallel) if parallel > 1 else None
    repeated: list[pa.Array] = []
    # fan-in 3 over the (non-empty, overlapping) files of 20: two or three levels, then the last merge
    got = distinct_count(LocalFileSystem(), paths, f"{tmp_path}/scratch", fan_in=3, rows=7, run=run,
                         parallel=parallel, repeated=repeated)
    assert got == len(everything)
    assert set(pa.concat_arrays(repeated).to_pylist()) == in_several if repeated else not in_several
    if run is not None:
        assert len(run.levels) >= 2  # the merge went through levels of parallel jobs
    assert not list((tmp_path / "scratch").glob("*")), "scratch files left behind"

    with merged(LocalFileSystem(), paths, f"{tmp_path}/scratch", fan_in=4, rows=5, value="n_chunks") as stream:
        batches = list(stream)
    table = pa.Table.from_batches(batches)
    assert table.column("doc_id").to_pylist() == sorted(everything)  # sorted, unique (Python order = UTF-8 order)
    largest = {i: max(x[i] for x in contents if i in x) for i in everything}
    assert dict(zip(table.column("doc_id").to_pylist(), table.column("n_chunks").to_pylist(), strict=True)) == largest
    assert all(b.num_rows <= 4 * 5 for b in batches)  # a round holds at most fan_in x rows ids


def test_files_whose_ranges_overlap_no_other_are_counted_without_a_merge(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fs = LocalFileSystem()
    groups = [["a1", "a2"], ["b1", "b3"], ["b2", "b4"], ["c1"], [], ["d1", "d2", "d9"],  # b* overlap each other
              ["z", "\x7f"], ["ü", "ÿ"], ["日本"], ["\x00a", "\x00b"]]  # code point order is UTF-8 byte order
    paths = []
    for k, g in enumerate(groups):
        table, _ = shard_ids(pa.array(g, pa.string()), np.ones(len(g), np.int32))
        write_table(fs, f"{tmp_path}/{k}.parquet", table)
        paths.append(f"{tmp_path}/{k}.parquet")
    alone, together = ids._apart(ids.file_ranges(fs, paths))
    assert sorted(r.path for r in together) == paths[1:3]
    seen: list[list[str]] = []
    real = ids.merged

    def spy(fs_: object, p: list[str], *a: object, **kw: object):  # noqa: ANN202
        seen.append(list(p))
        return real(fs_, p, *a, **kw)

    monkeypatch.setattr(ids, "merged", spy)
    assert distinct_count(fs, paths, f"{tmp_path}/s") == 17
    assert seen == [paths[1:3]]
    seen.clear()
    assert distinct_count(fs, [paths[0], paths[3], paths[5]], f"{tmp_path}/s") == 6 and not seen


@pytest.mark.parametrize("in_memory", [10_000, 0])  # looked up in memory / merged and joined
def test_streamed_candidates_delete_what_the_whole_table_did(tmp_path: Path, in_memory: int) -> None:
    rng = random.Random(11)
    cands, cand_contents = _files(tmp_path, rng, 9, "pending")
    current, cur_contents = _files(tmp_path, rng, 7, "ids")
    # what the id pass did before: every candidate file at once, the largest count per id, minus any current id
    largest: dict[str, int] = {}
    for x in cand_contents:
        for i, k in x.items():
            largest[i] = max(k, largest.get(i, k))
    held = set().union(*[set(x) for x in cur_contents])
    expected = {i: k for i, k in largest.items() if i not in held}

    fs, out = LocalFileSystem(), f"{tmp_path}/gone/out.parquet"
    n = missing(fs, cands, current, out, f"{tmp_path}/scratch", fan_in=3, rows=6, in_memory=in_memory)
    got = ids.read_table(fs, out)
    assert n == len(expected) == got.num_rows
    assert got.column("doc_id").to_pylist() == sorted(expected)
    assert dict(zip(got.column("doc_id").to_pylist(), got.column("n_chunks").to_pylist(), strict=True)) == expected
    assert not list((tmp_path / "scratch").glob("*"))


def test_max_delete_counts_every_document_before_deleting_any(tmp_path: Path) -> None:
    from cluster.manifest.store import Store
    from cluster.stages.idpass import IdPass, run_id_pass

    store = Store(str(tmp_path / "m"))
    fs, rng = store.fs, random.Random(5)
    rels, contents = [], []
    for k in range(12):
        picked = rng.sample(UNIVERSE, 150)
        table, _ = shard_ids(pa.array(picked, pa.string()), np.ones(len(picked), np.int32))
        rels.append(f"ids/{k}.parquet")
        write_table(fs, store.path(rels[-1]), table)
        contents.append(set(picked))
    processed, kept, vanished = rels[:4], rels[4:6], rels[6:]
    held = set().union(*contents[:6])
    gone = set().union(*contents[6:]) - held
    everything = set().union(*contents[:4])
    job = IdPass(store_uri=store.uri, storage_options={}, processed=processed, kept=kept,
                 candidates=[*vanished, "pending/missing.parquet"], delete=True, max_delete=len(gone) - 1,
                 run_id="r1", parallel=1)
    result = run_id_pass(job)  # refused before Milvus is touched (there is none here)
    assert result["refused"] == len(gone) and result["docs_deleted"] == 0
    assert result["distinct"] == len(everything)
    assert not (tmp_path / "m" / "tmp" / "r1").exists()


def test_a_level_runs_as_ray_tasks(tmp_path: Path, ray_local: None) -> None:
    from cluster.manifest.store import Store
    from cluster.stages.idpass import ray_runner

    rng = random.Random(3)
    paths, contents = _files(tmp_path / "m", rng, 6)
    everything = set().union(*[set(x) for x in contents])
    store = Store(str(tmp_path / "m"))
    run = ray_runner(store.uri, {}, 2, pin=True)
    repeated: list[pa.Array] = []
    assert distinct_count(store.fs, paths, f"{tmp_path}/m/tmp", fan_in=2, rows=16, run=run, parallel=2,
                          repeated=repeated) == len(everything)
    in_several = {i for i in everything if sum(i in x for x in contents) > 1}
    assert set(pa.concat_arrays(repeated).to_pylist() if repeated else []) == in_several
