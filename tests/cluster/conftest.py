"""Fixtures shared by the cluster tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pymilvus import MilvusClient

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
