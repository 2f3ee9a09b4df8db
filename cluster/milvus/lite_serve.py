"""A milvus-lite gRPC server on a loopback port that no other server can share.

``milvus-lite server --port P`` binds with gRPC's default ``SO_REUSEPORT``: if another gRPC server
(another run's milvus-lite, an embedded one in a notebook, a Ray component) took port P in the
moment between choosing it and binding it, both bind and the kernel splits the connections between
them, so a run can write into somebody else's collection. This entry point binds without
``SO_REUSEPORT`` (a taken port is an error, never a shared one), lets the kernel choose the port
when none is given, and writes the bound port to ``--port-file`` once it listens::

    python -m cluster.milvus.lite_serve --data-dir DIR --port-file FILE [--port P]

SIGTERM and SIGINT stop it gracefully (in-flight requests drained for up to 5 s, the data folder's
lock released).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # what milvus-lite's own server and Milvus standalone accept
# A Milvus server lets clients ping every 5 s, also between calls (its gRPC keepalive enforcement policy:
# MinTime 5 s, PermitWithoutStream). gRPC's defaults (5 min, and 2 h without calls) answer pymilvus'
# 10-s keepalive pings of an idle connection with strikes and then GOAWAY "too_many_pings", which
# a pooled client in a long-lived Ray worker then met as "Too many pings" / "server unavailable".
SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),  # a taken port is an error, never shared with another server
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
]


def serve(data_dir: Path, port_file: Path, *, host: str = "127.0.0.1", port: int = 0, max_workers: int = 10) -> int:
    """Serve ``data_dir`` until SIGTERM/SIGINT; returns the exit status."""
    import grpc
    from pymilvus.grpc_gen import milvus_pb2_grpc

    try:
        from milvus_lite.adapter.grpc.servicer import MilvusServicer
        from milvus_lite.db import MilvusLite
    except ImportError as e:
        print(f"milvus-lite >= 3.2 is needed for a local milvus.uri ({e}): pip install 'milvus-lite>=3.2'",
              file=sys.stderr)
        return 2

    db = MilvusLite(str(data_dir))  # takes the folder's lock: a second process on it fails here
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=SERVER_OPTIONS)
    milvus_pb2_grpc.add_MilvusServiceServicer_to_server(MilvusServicer(db), server)
    why = "port taken"
    try:
        bound = server.add_insecure_port(f"{host}:{port}")  # grpcio raises when it cannot bind (older ones: 0)
    except RuntimeError as e:
        bound, why = 0, str(e)
    if not bound:
        db.close()
        print(f"cannot listen on {host}:{port} ({why}): choose another port, or none", file=sys.stderr)
        return 3
    server.start()
    tmp = port_file.with_name(port_file.name + ".tmp")
    tmp.write_text(str(bound))
    os.replace(tmp, port_file)  # the parent sees the whole number or nothing
    print(f"milvus-lite serving {data_dir} on {host}:{bound}", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=5).wait()
    db.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.milvus.lite_serve", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--port-file", type=Path, required=True, help="where the bound port is written once listening")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 (default): the kernel chooses a free port")
    p.add_argument("--max-workers", type=int, default=10)
    a = p.parse_args(argv)
    return serve(a.data_dir, a.port_file, host=a.host, port=a.port, max_workers=a.max_workers)


if __name__ == "__main__":
    sys.exit(main())
