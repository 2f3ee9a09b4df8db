"""The batch loop of an embed call: one batch queued ahead, out-of-memory back-off.

Batch k+1 is launched before batch k is collected, so on a GPU the device always has the next
batch queued while the host reads back the previous one (``DEPTH`` = 2 batches in flight; the
inputs are already tokenized, so the host work per batch is small). A batch that runs out of
memory halves the token budget, for the rest of the process, and the batch and those not yet
launched are re-packed and retried (FlagEmbedding's shrink loop, per batch).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from embedder.batching import pack_batches
from embedder.forward import BatchResult, InFlight, ModelRunner
from embedder.precision import is_out_of_memory, release_cached_memory
from embedder.token_rows import TokenRows

log = logging.getLogger(__name__)
DEPTH = 2


@dataclass
class Budget:
    """The token budget of a forward pass; ``halvings`` counts out-of-memory back-offs."""

    max_tokens: int
    max_rows: int
    halvings: int = 0


def run_batches(runner: ModelRunner, rows: TokenRows, budget: Budget) -> Iterator[tuple[np.ndarray, BatchResult]]:
    """Yield ``(row indices, result)`` for every batch; every row lands in exactly one of them."""
    padded = not runner.unpadded
    queue = deque(pack_batches(rows.lengths, budget.max_tokens, budget.max_rows, padded=padded))
    ahead: deque[InFlight] = deque()
    while queue or ahead:
        while queue and len(ahead) < DEPTH:
            try:
                ahead.append(runner.launch(rows, queue[0]))
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                queue = _shrink(queue, rows, budget, padded, runner.m.device, e)
                continue
            queue.popleft()
        f = ahead.popleft()
        try:
            result = runner.collect(f)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            queue.appendleft(f.batch)
            queue = _shrink(queue, rows, budget, padded, runner.m.device, e)
            continue
        yield f.batch, result


def cost(lengths: np.ndarray, padded: bool) -> int:
    """Tokens a batch of rows with these lengths counts against the budget."""
    return len(lengths) * int(lengths.max()) if padded else int(lengths.sum())


def _shrink(queue: deque[np.ndarray], rows: TokenRows, budget: Budget, padded: bool, device: str,
            error: BaseException) -> deque[np.ndarray]:
    """Halve the budget below the failed batch (``queue[0]``) and re-pack it with the batches after it."""
    release_cached_memory(device)
    failed = queue[0]
    lengths = rows.lengths
    if len(failed) == 1:
        raise RuntimeError(f"out of memory on a single chunk of {int(lengths[failed[0]])} tokens; lower "
                           "model.max_seq_length or use a device with more memory") from error
    before = budget.max_tokens
    budget.max_tokens = max(1, min(before, cost(lengths[failed], padded)) // 2)
    budget.halvings += 1
    log.warning("out of memory on a batch of %d rows (%d tokens): token budget %d -> %d, retrying (%s)",
                len(failed), cost(lengths[failed], padded), before, budget.max_tokens, error)
    remaining = np.concatenate(list(queue))
    return deque(remaining[b] for b in pack_batches(lengths[remaining], budget.max_tokens, budget.max_rows,
                                                    padded=padded))
