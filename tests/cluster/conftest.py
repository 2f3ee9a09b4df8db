"""Fixtures shared by the cluster tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pymilvus import MilvusClient

from cluster.manifest import Store
from tests.servers import LiteServer


@pytest.fixture(scope="module")
def milvus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusClient]:
    """One ``milvus-lite server`` for the module, and a client of it."""
    server = LiteServer(tmp_path_factory.mktemp("lite"))
    server.start()
    client = MilvusClient(uri=server.uri)
    try:
        yield client
    finally:
        client.close()
        server.stop()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """A checkpoint storage on a local folder, then on the moto S3 server."""
    if request.param == "local":
        return Store(str(tmp_path / "state"))
    s3_server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return Store(f"s3://{bucket}/state", dict(s3_server))
