"""jobs.reindex's retention rule and its Milvus retries, without a build (milvus-lite only, a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.jobs.conftest import write_config


def test_retrying_client_opens_a_fresh_connection_after_a_transient_error() -> None:
    from pymilvus import MilvusException

    from cluster.milvus.alias_swap import RetryingClient

    opened: list[object] = []
    sleeps: list[float] = []

    class Fake:
        def __init__(self) -> None:
            self.closed = False
            opened.append(self)

        def describe_alias(self, alias: str) -> dict[str, str]:
            if len(opened) == 1:  # the first connection was dropped by the server
                raise MilvusException(code=2, message="Fail connecting to server: GOAWAY too_many_pings")
            return {"collection_name": "c"}

        def drop_collection(self, name: str) -> None:
            raise MilvusException(code=1100, message="invalid parameter")

        def close(self) -> None:
            self.closed = True

    client = RetryingClient(Fake, sleep=sleeps.append)
    assert client.describe_alias("a") == {"collection_name": "c"}
    assert len(opened) == 2 and opened[0].closed and not opened[1].closed  # type: ignore[attr-defined]
    assert client.retries == 1 and len(sleeps) == 1
    with pytest.raises(MilvusException, match="invalid parameter"):
        client.drop_collection("x")  # not transient: raised at once
    assert client.retries == 1 and len(opened) == 2
    client.close()
    assert opened[1].closed  # type: ignore[attr-defined]


@pytest.mark.integration
def test_retention_drops_abandoned_and_leftover_builds_never_what_is_needed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pymilvus import MilvusClient

    from cluster.manifest import Lease, Store, target_key
    from cluster.manifest.alias_records import AliasBuilds, AliasHistory
    from jobs.config import load_config
    from jobs.reindex import rollback, swap

    db, state = tmp_path / "m.db", tmp_path / "state"
    cfg = load_config(write_config(tmp_path / "job.yaml", source={"uri": str(tmp_path / "docs")}, model={"name": "m"},
                                   milvus={"uri": str(db), "alias": "live"}, checkpoint={"uri": str(state)},
                                   reindex={"retention": 2}))
    names = {
        "old": "live__m_dfull_20240101000000",  # in the history, beyond retention: dropped
        "previous": "live__m_dfull_20240102000000",  # the live one until now: kept for --rollback
        "building": "live__m_dfull_20240103000000",  # the build in progress (other settings): a re-run continues it
        "busy": "live__m_dfull_20240104000000",  # unrecorded, but a live run holds its lease
        "other_alias": "live__m_dfull_20240105000000",  # what another alias points at
        "foreign": "live__x__m_dfull_20240106000000",  # a build of the alias live__x
        "leftover": "live__m_dfull_20240107000000",  # left by a killed build nobody recorded: dropped
        "abandoned": "live_manual",  # a --collection build recorded as abandoned: dropped
        "unrelated": "notes",
        "new": "live__m_dfull_20240108000000",
    }
    client = MilvusClient(str(db))
    for name in names.values():
        client.create_collection(name, dimension=4)
    client.create_alias(names["previous"], "live")
    client.create_alias(names["other_alias"], "other")
    AliasHistory(str(state), {}, "live").save([{"collection": names["old"], "at": 1.0},
                                              {"collection": names["previous"], "at": 2.0}])
    AliasBuilds(str(state), {}, "live").save({
        "current": {"collection": names["building"], "identity": "other-settings", "started_at": 3.0,
                    "state": "building"},
        "abandoned": [{"collection": names["abandoned"], "identity": "x", "started_at": 1.0, "state": "building",
                       "reason": "failed validation: 3 rows but 4 chunks were embedded", "at": 2.0}]})
    lease = Lease(Store(str(state)).child("leases"), target_key(str(db), None, names["busy"]), {"run_id": "r1"})
    lease.acquire()
    caplog.set_level("INFO")
    try:
        dropped = swap(cfg, cfg.milvus, names["new"])
    finally:
        lease.release()

    assert sorted(dropped) == sorted([names["old"], names["leftover"], names["abandoned"]])
    assert sorted(client.list_collections()) == sorted(set(names.values()) - set(dropped))
    assert client.describe_alias("live")["collection_name"] == names["new"]
    assert client.describe_alias("other")["collection_name"] == names["other_alias"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for key in ("old", "leftover", "abandoned"):
        assert f"retention drops {names[key]}" in logged
    assert f"{names['busy']} (" in logged and "a live run is writing it" in logged
    assert [e["collection"] for e in AliasHistory(str(state), {}, "live").load()] == [names["previous"], names["new"]]
    builds = AliasBuilds(str(state), {}, "live").load()
    assert builds["current"]["collection"] == names["building"] and builds["abandoned"] == []
    assert rollback(cfg) == names["previous"]
    client.close()


@pytest.mark.integration
def test_a_validated_build_whose_swap_failed_is_swapped_by_the_rerun(tmp_path: Path) -> None:
    import json

    from pymilvus import MilvusClient

    from cluster.manifest.alias_records import VALIDATED, AliasBuilds
    from jobs.config import load_config
    from jobs.reindex import build_identity, main

    db, state, summary = tmp_path / "m.db", tmp_path / "state", tmp_path / "summary.json"
    path = write_config(tmp_path / "job.yaml", source={"uri": str(tmp_path / "docs")}, model={"name": "m"},
                        milvus={"uri": str(db), "alias": "live"}, checkpoint={"uri": str(state)})
    name = "live__m_dfull_20240101000000"
    client = MilvusClient(str(db))
    client.create_collection(name, dimension=4)
    builds = AliasBuilds(str(state), {}, "live")
    builds.start(name, build_identity(load_config(path)))
    builds.set_state(name, VALIDATED)  # then the swap failed

    assert main(["--config", str(path), "--summary", str(summary)]) == 0  # no source, no model: nothing is embedded
    assert client.describe_alias("live")["collection_name"] == name
    assert json.loads(summary.read_text())["collection"] == name
    assert builds.load() == {"current": None, "abandoned": []}
    client.close()
