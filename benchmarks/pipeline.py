"""CPU pipeline efficiency: the whole job's steady tokens/s against a bare bf16 forward pass over the same texts.

One run, same machine, same model (the offline multilingual-e5-small, ``make model``), same
texts: ~900 short documents in 10 languages (the sample corpus' titles, bodies and the first
sentence of each body), each one 512-token window. Measured, in this order:

1. **bare forward** (before): only ``model(input_ids, attention_mask)`` in bf16, all cores,
   the chunks sorted and packed by the job's token budget (padded, as the issue defines it);
   the same over packed (unpadded) batches, for reference;
2. **encoder**: ``Encoder.embed_rows`` in this process (the embed actor's work without Ray);
3. **job**: ``python -m jobs.embed`` as a subprocess (its own local Ray, milvus-lite), whose
   summary gives ``steady_tokens_per_s`` (tokens after the first block over the time from
   the first block written to the last), ``tokens_per_s`` and ``startup_s``;
4. **bare forward** (after), so that drift of a shared machine shows.

Prints each figure and the ratios job / bare and encoder / bare.

    python benchmarks/pipeline.py [--docs 900] [--shards 4] [--no-job] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
MODEL = ROOT / ".cache/models/multilingual-e5-small"
MAX_TOKENS = 16384


def short_documents(n: int) -> list[dict[str, str]]:
    """``n`` short documents in 10 languages: titles, bodies, and each body's first sentence, cycled."""
    from sample.corpus import documents

    base = []
    for d in documents():
        if d.kind == "handbook":
            continue
        base.append({"id": d.id, "text": d.text, "lang": d.lang})
        if d.kind == "body":
            first = d.text.replace("。", ". ").replace("।", ". ").split(". ")[0]
            base.append({"id": d.id + ".first", "text": first, "lang": d.lang})
    return [{**base[i % len(base)], "id": f"{base[i % len(base)]['id']}#{i // len(base)}"} for i in range(n)]


def bare_forward(chunks: list[np.ndarray], padded: bool, threads: int) -> tuple[float, int]:
    """Seconds of ``model(**batch)`` over the token-budget batches (inputs prepared beforehand), and tokens run."""
    import torch
    from sentence_transformers import SentenceTransformer

    from embedder.batching import pack_batches
    from embedder.forward import position_offset
    from embedder.token_rows import TokenRows

    torch.set_num_threads(threads)
    st = SentenceTransformer(str(MODEL), device="cpu").to(torch.bfloat16)
    hf = st.transformers_model
    if not padded:
        from embedder.attention import VARLEN, register

        register()
        hf.set_attn_implementation(VARLEN)
    rows = TokenRows.from_list(chunks)
    batches = []
    for b in pack_batches(rows.lengths, MAX_TOKENS, 256, padded=padded):
        if padded:
            ids, mask = rows.padded(b, st.tokenizer.pad_token_id)
            batches.append({"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)})
        else:
            p = rows.packed(b, position_offset(hf))
            cu = torch.from_numpy(p.cu_seqlens)
            batches.append({"input_ids": torch.from_numpy(p.ids)[None],
                            "position_ids": torch.from_numpy(p.positions)[None],
                            "token_type_ids": torch.zeros(1, len(p.ids), dtype=torch.int64), "cu_seq_lens_q": cu,
                            "cu_seq_lens_k": cu, "max_length_q": p.max_len, "max_length_k": p.max_len})
    with torch.inference_mode():
        hf(**batches[-1])  # warm-up
        t = time.perf_counter()
        for b in batches:
            hf(**b)
        secs = time.perf_counter() - t
    return secs, sum(int(b["input_ids"].numel()) for b in batches)


def encoder_in_process(chunks: list[np.ndarray], threads: int) -> tuple[float, str]:
    import torch

    from embedder.encoder import Encoder
    from embedder.settings import BatchConfig, ChunkingConfig, ModelConfig
    from embedder.token_rows import TokenRows

    torch.set_num_threads(threads)
    enc = Encoder(ModelConfig(name=str(MODEL)), BatchConfig(max_tokens=MAX_TOKENS), ChunkingConfig())
    rows = TokenRows.from_list(chunks)
    enc.embed_rows(rows.take(np.arange(32)))  # warm-up
    t = time.perf_counter()
    enc.embed_rows(rows)
    return time.perf_counter() - t, enc.model.attention.implementation


def prepare_job(docs: list[dict[str, str]], shards: int, tmp: Path, overrides: list[str]) -> list[str]:
    """Write the corpus as parquet shards and the job's config under ``tmp``; return the job's command line."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    src = tmp / "corpus"
    src.mkdir(parents=True)
    for k in range(shards):
        pq.write_table(pa.Table.from_pylist(docs[k::shards]), src / f"part-{k:05d}.parquet")
    cfg = {"source": {"uri": str(src), "metadata_columns": ["lang"], "lang_column": "lang"},
           "model": {"name": str(MODEL), "precision": "auto"},
           "batch": {"max_tokens": MAX_TOKENS},
           "cluster": {"workers": 1, "cpus_per_worker": 1},
           "milvus": {"uri": str(tmp / "milvus.db"), "collection": "bench"},
           "checkpoint": {"uri": str(tmp / "state" / "checkpoints")},
           "errors": {"uri": str(tmp / "state" / "errors")}}
    (tmp / "job.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "jobs.embed", "--config", str(tmp / "job.yaml"),
           "--summary", str(tmp / "summary.json")]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def run_job(cmd: list[str], tmp: Path) -> tuple[dict[str, Any], float]:
    """Run the job as its own process (it starts a local Ray and a milvus-lite server); summary and wall time."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
                          start_new_session=True)
    wall = time.perf_counter() - t
    (tmp / "job.log").write_text(proc.stdout + proc.stderr)
    summary = tmp / "summary.json"
    if proc.returncode not in (0, 3) or not summary.exists():
        raise RuntimeError(f"the job failed (exit {proc.returncode}); log tail:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return json.loads(summary.read_text()), wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=900)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--no-job", action="store_true", help="only the in-process figures")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra job config override (repeatable)")
    p.add_argument("--keep", type=Path, help="copy the job's log and summary here")
    p.add_argument("--prepare", type=Path, metavar="DIR", help="only write the corpus and config into DIR and print "
                   "the job's command (to run or profile it alone)")
    args = p.parse_args()
    if args.prepare:
        print(" ".join(prepare_job(short_documents(args.docs), args.shards, args.prepare, args.overrides)))
        return 0

    from embedder.models.info import load_model_info
    from embedder.settings import ChunkingConfig, ModelConfig
    from embedder.threads import usable_cores
    from embedder.tokenize import TextTokenizer

    if not (MODEL / "config.json").exists():
        raise SystemExit(f"{MODEL} is missing: run `make model`")
    threads = usable_cores()
    docs = short_documents(args.docs)
    model = ModelConfig(name=str(MODEL))
    chunks = TextTokenizer(load_model_info(model), model, ChunkingConfig()).passages([d["text"] for d in docs])
    assert len(chunks.input_ids) == len(docs), "every document must fit one window"
    tokens = int(chunks.lengths.sum())
    print(f"{len(docs)} documents, {len({d['lang'] for d in docs})} languages, {tokens} tokens "
          f"(mean {tokens / len(docs):.0f}, max {chunks.lengths.max()}); {threads} cores; budget {MAX_TOKENS}",
          flush=True)

    rows: list[tuple[str, float, str]] = []

    def show(name: str, tok_s: float, note: str = "") -> None:
        rows.append((name, tok_s, note))
        print(f"{name:38s} {tok_s:9.0f} tokens/s  {note}", flush=True)

    secs, run = bare_forward(chunks.input_ids, padded=True, threads=threads)
    show("bare bf16 forward, padded (before)", tokens / secs, f"{secs:.2f}s, padding efficiency {tokens / run:.3f}")
    secs, _ = bare_forward(chunks.input_ids, padded=False, threads=threads)
    show("bare bf16 forward, packed", tokens / secs, f"{secs:.2f}s")
    secs, impl = encoder_in_process(chunks.input_ids, threads)
    show("encoder in process (auto)", tokens / secs, f"{secs:.2f}s, {impl}")
    summary: dict[str, Any] = {}
    if not args.no_job:
        with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
            summary, wall = run_job(prepare_job(docs, args.shards, Path(tmp), args.overrides), Path(tmp))
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                for name in ("job.log", "summary.json", "job.yaml"):
                    (args.keep / name).write_bytes((Path(tmp) / name).read_bytes())
        steady = summary.get("steady_tokens_per_s") or 0.0
        show("job: steady_tokens_per_s", steady, f"startup_s {summary.get('startup_s')}, elapsed_s "
             f"{summary.get('elapsed_s')}, process wall {wall:.1f}s")
        show("job: tokens_per_s (whole run)", summary.get("tokens_per_s") or 0.0,
             f"padding efficiency {summary.get('padding_efficiency')}, tokens {summary.get('tokens')}")
    secs, _ = bare_forward(chunks.input_ids, padded=True, threads=threads)
    show("bare bf16 forward, padded (after)", tokens / secs, f"{secs:.2f}s")

    bare = (rows[0][1] + rows[-1][1]) / 2
    print(f"\nbare padded forward, mean of before/after: {bare:.0f} tokens/s")
    print(f"encoder in process / bare: {rows[2][1] / bare:.2f}")
    if summary:
        print(f"job steady / bare: {(summary.get('steady_tokens_per_s') or 0) / bare:.2f}   "
              f"job whole run / bare: {summary['tokens_per_s'] / bare:.2f}   startup {summary.get('startup_s')}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
