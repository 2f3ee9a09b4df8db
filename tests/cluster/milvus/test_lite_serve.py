"""The job's milvus-lite server never shares its port with another gRPC server.

gRPC servers bind with SO_REUSEPORT by default: `milvus-lite server --port P` started while another
gRPC server holds P binds too, and the kernel splits connections between the two (a CI run once
wrote a test's rows into another test's collection that way). `cluster.milvus.lite_serve` binds
without it and lets the kernel choose the port.
"""

from __future__ import annotations

from concurrent import futures
from pathlib import Path

import pytest

from cluster.milvus.errors import MilvusConnectError
from cluster.milvus.lite import spawn


def test_a_taken_port_is_refused_not_shared(tmp_path: Path) -> None:
    import grpc

    other = grpc.server(futures.ThreadPoolExecutor(max_workers=1))  # gRPC's defaults: SO_REUSEPORT on
    port = other.add_insecure_port("127.0.0.1:0")
    other.start()
    try:
        log = tmp_path / "lite.log"
        with pytest.raises(MilvusConnectError, match="exited with 3"):
            spawn(tmp_path / "data", log, port=port, timeout_s=60)
        assert f"cannot listen on 127.0.0.1:{port}" in log.read_text()
    finally:
        other.stop(0)


def test_the_kernel_chooses_the_port_and_sigterm_releases_the_folder(tmp_path: Path) -> None:
    from pymilvus import MilvusClient

    proc, port = spawn(tmp_path / "data")
    try:
        client = MilvusClient(f"http://127.0.0.1:{port}")
        client.create_collection("c", dimension=4)
        client.insert("c", [{"id": 1, "vector": [0.1, 0.2, 0.3, 0.4]}])
        assert client.query("c", filter="id >= 0", output_fields=["id"]) == [{"id": 1}]
        client.close()
    finally:
        proc.terminate()
        assert proc.wait(30) == 0  # a graceful stop, not a kill
    proc, port = spawn(tmp_path / "data")  # the folder's lock was released: a new server opens it
    try:
        client = MilvusClient(f"http://127.0.0.1:{port}")
        client.load_collection("c")
        assert client.query("c", filter="id >= 0", output_fields=["id"]) == [{"id": 1}]
        client.close()
    finally:
        proc.terminate()
        proc.wait(30)


def test_keepalive_pings_between_calls_are_accepted_as_a_milvus_server_does(tmp_path: Path) -> None:
    """pymilvus pings an idle connection every 10 s; a Milvus server allows a ping every 5 s, also between
    calls. With gRPC's defaults the third such ping gets GOAWAY "too_many_pings" (a CI run's id pass
    failed on it): here a client pinging every 6 s, idle for three pings, keeps its one connection."""
    import time

    import grpc
    from pymilvus.grpc_gen import milvus_pb2, milvus_pb2_grpc

    proc, port = spawn(tmp_path / "data")
    states: list[grpc.ChannelConnectivity] = []
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.keepalive_time_ms", 6000), ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0)])
    try:
        stub = milvus_pb2_grpc.MilvusServiceStub(channel)
        assert stub.ShowCollections(milvus_pb2.ShowCollectionsRequest(), timeout=30).status.code == 0
        channel.subscribe(states.append)
        time.sleep(20)  # pings at 6, 12 and 18 s; the default policy's GOAWAY would end the connection
        after = list(states)
        assert after and set(after) == {grpc.ChannelConnectivity.READY}, after
        assert stub.ShowCollections(milvus_pb2.ShowCollectionsRequest(), timeout=30).status.code == 0
    finally:
        channel.close()
        proc.terminate()
        proc.wait(30)
