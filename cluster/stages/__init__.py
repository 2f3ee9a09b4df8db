"""Pipeline stages: each is a plain callable on pyarrow tables, placed by ``cluster.pipeline``.

read (CPU tasks) -> tokenize (CPU tasks) -> embed (actor pool, GPUs) -> the driver writes.
"""
