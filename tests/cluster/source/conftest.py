"""Fixtures of the source tests."""

from __future__ import annotations

import pytest


@pytest.fixture()
def s3fs_client(s3_server: dict[str, object]):
    """A fresh s3fs filesystem on the moto server (for uploading test shards)."""
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server["endpoint_url"]},
                             key=s3_server["key"], secret=s3_server["secret"], skip_instance_cache=True)
