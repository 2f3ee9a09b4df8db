"""Small pyarrow helpers shared by the stages."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from cluster import contract as c

SHARD_END = c.SHARD_END


def list_array(offsets: np.ndarray, values: np.ndarray, valid: np.ndarray | None = None) -> pa.ListArray:
    """A list column from CSR offsets/values, without a Python loop; ``valid=False`` rows are null."""
    mask = None if valid is None else pa.array(~valid)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values), mask=mask)


def fixed_list(matrix: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """A ``fixed_size_list<float32>[dim]`` column from a 2-D array; ``valid=False`` rows are null."""
    rows, dim = matrix.shape
    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1))
    arr = pa.FixedSizeListArray.from_arrays(flat, dim)
    if valid is not None and not valid.all():
        arr = pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(~valid))
    return arr


def is_payload(table: pa.Table) -> np.ndarray:
    """Rows that are documents/chunks to process: no error and not an end marker."""
    ok = np.asarray(table.column(c.ERROR).is_null())
    if SHARD_END in table.column_names:
        ok &= np.asarray(table.column(SHARD_END).is_null())
    return ok
