"""Import files have the layout pymilvus' own LocalBulkWriter gives the same collection (parquet).

The two differ in one thing only, field nullability, and on purpose: LocalBulkWriter writes every
column as optional (pandas' ``to_parquet``), ours marks the collection's non-nullable fields
required, as Milvus' own ``ConvertToArrowSchema`` does (``Nullable: field.GetNullable()``,
internal/util/importutilv2/parquet/util.go). Milvus' parquet reader matches columns by name and
type only (``isSchemaEqual`` / ``isArrowDataTypeConvertible`` compare type ids) and reads both
"optional" and "required" columns (``bytesToValidData``), so both files import the same way; a
required column cannot hold a null that a non-nullable field would refuse anyway.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pymilvus.bulk_writer import BulkFileType, LocalBulkWriter

from cluster.milvus.importfiles import ImportFiles
from cluster.milvus.payload import to_rows
from cluster.milvus.schema import CollectionSpec, build_schema
from embedder.storage import filesystem
from tests.cluster.milvus.test_importfiles import META, full_batch


def theirs(spec: CollectionSpec, table: pa.Table, folder: Path) -> Path:
    """The file pymilvus' LocalBulkWriter writes for the rows of ``table``."""
    with LocalBulkWriter(schema=build_schema(spec), local_path=str(folder), file_type=BulkFileType.PARQUET) as w:
        for row in to_rows(table, spec, sparse_as="lists"):
            w.append_row(row)
        w.commit()
        files = [Path(f) for batch in w.batch_files for f in batch]
    assert len(files) == 1
    return files[0]


def ours(spec: CollectionSpec, table: pa.Table, folder: Path) -> Path:
    fs, root = filesystem(str(folder / "out"), {})
    files = ImportFiles(spec, fs, root, "w0", max_file_bytes=1 << 30, scratch_dir=str(folder / "scratch"))
    files.write(table, np.zeros(table.num_rows, np.int32))
    (out,) = files.close()
    return Path(out.uri)


@pytest.mark.parametrize("kind", ["dense+sparse", "dense only", "no text, no fingerprints"])
def test_the_arrow_schema_is_local_bulk_writers(make_batch, tmp_path: Path, kind: str) -> None:
    older = kind == "no text, no fingerprints"
    spec = CollectionSpec(name="docs", dense_dim=16, has_sparse=kind == "dense+sparse", metadata=META,
                          store_text=not older, fingerprints=not older)
    table = full_batch(make_batch, 20)
    if spec.fingerprints:
        table = table.append_column("embed_fp", pa.array([f"{i:016x}/1/9" for i in range(20)]))
    if not spec.has_sparse:
        table = table.drop_columns(["sparse_indices", "sparse_values"])
    a, b = pq.read_schema(theirs(spec, table, tmp_path / "theirs")), pq.read_schema(ours(spec, table, tmp_path))

    assert a.names == b.names == spec.field_names  # the collection's fields, in order; no "$meta" (no dynamic field)
    assert [f.type for f in a] == [f.type for f in b]  # list<element: float> dense, string sparse, int32, ...
    assert b.field("dense").type == pa.list_(pa.field("element", pa.float32()))  # a list, not a fixed_size_list
    if spec.has_sparse:
        assert b.field("sparse").type == pa.string()
    nullable = {f["name"]: bool(f.get("nullable")) for f in build_schema(spec).to_dict()["fields"]}
    assert all(f.nullable for f in a)  # LocalBulkWriter: every column optional
    assert {f.name: f.nullable for f in b} == nullable  # ours: as the collection's fields (see the module doc)


def test_the_values_are_local_bulk_writers(make_batch, tmp_path: Path) -> None:
    spec = CollectionSpec(name="docs", dense_dim=16, has_sparse=True, metadata=META, text_max_length=12)
    table = full_batch(make_batch, 25).append_column("embed_fp", pa.array(["fp"] * 25))
    a = pq.read_table(theirs(spec, table, tmp_path / "theirs"))
    b = pq.read_table(ours(spec, table, tmp_path))
    for name in spec.field_names:
        if name == "sparse":  # JSON text: pymilvus prints float64 decimals with spaces, we print the shortest
            for x, y in zip(a.column(name).to_pylist(), b.column(name).to_pylist()):  # float32 decimals
                x, y = json.loads(x), json.loads(y)
                assert x["indices"] == y["indices"] and len(x["values"]) == len(y["values"])
                f32 = [np.array(v["values"], np.float64).astype(np.float32) for v in (x, y)]
                assert np.array_equal(*f32)
        else:
            assert a.column(name).to_pylist() == b.column(name).to_pylist(), name


def test_sparse_weights_are_printed_so_that_they_parse_back_exactly(make_batch) -> None:
    """Shortest float32 decimals: read as float64 then rounded to float32 (or read as float32) they give the weight."""
    from cluster.milvus.importfiles import import_table

    edge = [1.0, 0.1, 1e-5, 3.4028235e38, np.finfo(np.float32).tiny, 1e-45, 123456.79, 2.0**-20]
    rng = np.random.default_rng(7)
    values = np.concatenate([np.array(edge, np.float32), rng.random(2000, dtype=np.float32),
                             (rng.standard_normal(2000) * 1e6).astype(np.float32)])
    n = len(values) // 8
    values = values[:n * 8]
    table = make_batch(n, metadata=False).drop_columns(["error", "sparse_indices", "sparse_values"])
    table = table.append_column("sparse_indices", pa.array([list(range(8))] * n, pa.list_(pa.int32())))
    table = table.append_column("sparse_values", pa.array(values.reshape(n, 8).tolist(), pa.list_(pa.float32())))
    spec = CollectionSpec(name="docs", dense_dim=16, has_sparse=True, fingerprints=False)
    parsed = [json.loads(s)["values"] for s in import_table(table, spec).column("sparse").to_pylist()]
    np.testing.assert_array_equal(np.array(parsed, np.float64).astype(np.float32).reshape(-1), values)
