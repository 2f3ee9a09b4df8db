"""CPU precisions audited like storage types: cross-lingual recall and tokens/s of fp32, bf16 and int8.

``model.precision: int8`` (dynamic int8 quantization of the Linear layers) is the usual CPU
answer where bf16 is not native; it is opt-in because its vectors differ from fp32's. This runs
``jobs.evaluate``'s embedding and metrics on the same pairs for each precision, in one process on
one machine, and prints tokens/s (real tokens embedded, passages and queries, over the encode
time) and dense recall@1/@10 / MRR@10 (cross-lingual averages), with the ratios against fp32.

    python benchmarks/precision.py [--pairs sample] [--langs en,de,ja,ru] [--precisions fp32,bf16,int8]

Model: the offline multilingual-e5-small of ``make model`` (384 dimensions, full).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
MODEL = ROOT / ".cache/models/multilingual-e5-small"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", default="sample")
    ap.add_argument("--langs", default="en,de,ja,ru")
    ap.add_argument("--precisions", default="fp32,bf16,int8")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    if not MODEL.is_dir():
        raise SystemExit(f"{MODEL} is missing: run `make model` first")

    import torch

    from benchmarks.incremental import cpu_name
    from embedder.encoder import Encoder
    from embedder.settings import BatchConfig, ChunkingConfig, ModelConfig
    from jobs.evaluate import embed_pairs, evaluate, read_pairs

    torch.set_num_threads(args.threads)
    pairs = read_pairs(args.pairs, langs=args.langs.split(","))
    print(f"machine: {cpu_name()}; torch {torch.__version__}, {args.threads} threads")
    print(f"pairs: {args.pairs}, {pairs.items} items x {len(pairs.languages)} languages ({', '.join(pairs.languages)})")
    rows = []
    for precision in args.precisions.split(","):
        encoder = Encoder(ModelConfig(name=str(MODEL), precision=precision, device="cpu"),  # type: ignore[arg-type]
                          BatchConfig(max_tokens=8192), ChunkingConfig())
        encoder.encode_passages(pairs.texts[:8])  # warm-up: first calls allocate
        encoder.stats.real_tokens = 0
        vectors = embed_pairs(encoder, pairs)
        tokens = encoder.stats.real_tokens
        report = evaluate(pairs, vectors, configured_dim=None, dims=["full"])
        head = report["averages"].get("cross_lingual", report["averages"]["all"])["dense"]
        rows.append({"precision": precision, "tokens": tokens, "seconds": vectors.encode_s,
                     "tokens_per_s": tokens / vectors.encode_s, **head})
    base = rows[0]
    print("| precision | tokens | seconds | tokens/s | x fp32 | R@1 | R@10 | MRR@10 | R@10 drop |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['precision']} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:.0f} | "
              f"{r['tokens_per_s'] / base['tokens_per_s']:.2f} | {r['recall@1']:.3f} | {r['recall@10']:.3f} | "
              f"{r['mrr@10']:.3f} | {base['recall@10'] - r['recall@10']:+.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
