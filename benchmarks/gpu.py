"""Device benchmark of the embed stage: tokens/s and model-FLOPs utilisation, against ``SentenceTransformer.encode``.

Runs with only torch, transformers, sentence-transformers, numpy and pyarrow (no Ray, no
Milvus, no downloads). It builds randomly initialised models from configs, writes them as
sentence-transformers folders with a word-level tokenizer (``w17`` is one token), and feeds
texts whose token lengths follow a realistic mix: the sample corpus' documents (token counts
measured with the XLM-R tokenizer, ``benchmarks/sample_lengths.json``) plus long documents
up to 8192 tokens, chunked at the model's limit as the job chunks them.

For each model, in one run, on the same texts:

* ``st.encode``: ``SentenceTransformer.encode`` fp16, batch 32 (the baseline; it tokenizes too);
* ``encoder padded`` / ``encoder unpadded``: this project's encoder (``Encoder.embed_rows`` on the
  tokenized chunks, i.e. the embed actor's work), fp16, with and without the sparse head;
* ``bare padded`` / ``bare unpadded``: only ``model(**batch)`` on the same batches, inputs already
  on the device (the ceiling for the encoder's own overhead).

MFU counts useful work only: 2 x non-embedding parameters x real tokens, plus attention
(4 x layers x hidden x sum of squared sequence lengths), over the device's dense fp16 peak
(989 TFLOP/s for H100/H200 SXM, ``--peak-tflops`` otherwise) and over a matmul measured in
the same run.

    python benchmarks/gpu.py [--out results.json]          # on the GPU machine, < 8 minutes
    python benchmarks/gpu.py --tiny                         # CPU, tiny configs, seconds (tests run this)
    python benchmarks/gpu.py --write-lengths                # refresh sample_lengths.json (needs `make model`)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
LENGTHS_FILE = Path(__file__).with_name("sample_lengths.json")
WORDS = 4000  # word-level vocabulary of the benchmark tokenizer (ids 4 .. WORDS + 3)
PEAKS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


@dataclass(frozen=True)
class ModelSpec:
    """A model to build: its transformer config, pooling, sparse head, and chunking limit."""

    name: str
    layers: int
    hidden: int
    heads: int
    intermediate: int
    positions: int
    vocab: int
    pooling: str
    sparse: bool

    @property
    def max_seq(self) -> int:
        return self.positions - 2  # XLM-R positions start at padding_idx + 1 = 2


FULL = [
    ModelSpec("bge-m3-size", 24, 1024, 16, 4096, 8194, 250002, "cls", True),
    ModelSpec("e5-small-size", 12, 384, 12, 1536, 514, 250037, "mean", False),
]
TINY = [
    ModelSpec("tiny-m3", 2, 32, 4, 64, 130, 5000, "cls", True),
    ModelSpec("tiny-e5", 2, 48, 4, 96, 66, 5000, "mean", False),
]


# ---------------------------------------------------------------- models and inputs


def build_model(spec: ModelSpec, out: Path, device: str) -> Path:
    """Write a random-weight sentence-transformers folder for ``spec`` (fp16 weights on CUDA)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=spec.vocab, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
                              num_attention_heads=spec.heads, intermediate_size=spec.intermediate,
                              max_position_embeddings=spec.positions, type_vocab_size=1, pad_token_id=1,
                              bos_token_id=0, eos_token_id=2)
    with torch.device(device):
        model = XLMRobertaModel(config, add_pooling_layer=False)
    if device.startswith("cuda"):
        model = model.half()
    model.save_pretrained(out)
    del model

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i + 4 for i in range(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
                            pad_token="<pad>", unk_token="<unk>", model_max_length=spec.max_seq).save_pretrained(out)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (out / "modules.json").write_text(json.dumps(modules))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": spec.max_seq,
                                                                "do_lower_case": False}))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": spec.hidden, "pooling_mode_cls_token": spec.pooling == "cls",
        "pooling_mode_mean_tokens": spec.pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False}))
    (out / "2_Normalize").mkdir(exist_ok=True)
    if spec.sparse:
        head = torch.nn.Linear(spec.hidden, 1)
        torch.save(head.state_dict(), out / "sparse_linear.pt")
    return out


def document_lengths(spec: ModelSpec, tiny: bool, reps: int, seed: int = 0) -> list[int]:
    """Token counts of the documents: the sample corpus ``reps`` times plus long ones up to 8192 tokens."""
    rng = np.random.default_rng(seed)
    sample = json.loads(LENGTHS_FILE.read_text())["lengths"]
    if tiny:
        return [min(int(x), spec.max_seq * 2) for x in rng.choice(sample, size=48)]
    lengths: list[int] = []
    for _ in range(reps):
        lengths += sample
        lengths += rng.integers(2048, 8193, size=8).tolist()  # long documents, BGE-M3's reason to exist
    return lengths


def chunk_lengths(lengths: list[int], limit: int, overlap: int = 32) -> list[int]:
    """Chunk token counts after windowing at ``limit`` (as the job's chunking does, specials kept)."""
    from embedder.chunking import windows

    out = []
    for n in lengths:
        body = n - 2
        out += [b - a + 2 for a, b in windows(body, limit - 2, overlap)]
    return out


def texts_of(lengths: list[int], seed: int = 1) -> list[str]:
    """Texts that the word-level tokenizer turns into exactly these token counts."""
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{i}" for i in rng.integers(0, WORDS, size=n - 2)) for n in lengths]


# ---------------------------------------------------------------- FLOPs

def model_flops(spec: ModelSpec, lengths: np.ndarray) -> float:
    """2 x non-embedding parameters x tokens + attention (QK^T and AV: 4 x hidden x L^2 per layer)."""
    h, i = spec.hidden, spec.intermediate
    per_layer = 4 * h * h + 4 * h + 2 * h * i + h + i + 4 * h  # q,k,v,o + biases, FFN + biases, 2 LayerNorms
    params = spec.layers * per_layer
    lengths = lengths.astype(np.float64)
    return 2.0 * params * lengths.sum() + 4.0 * spec.layers * h * float((lengths ** 2).sum())


def measured_peak(device: str) -> float | None:
    """fp16 dense matmul FLOP/s measured here (CUDA only)."""
    import torch

    if not device.startswith("cuda"):
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.float16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.float16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 20 * 2 * 8192**3 / (time.perf_counter() - t)


# ---------------------------------------------------------------- the runs


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Any, device: str, repeat: int = 1) -> tuple[float, Any]:
    """Best of ``repeat`` wall times of ``fn()`` (device synchronized), and its last result."""
    best, result = math.inf, None
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best, result


def run_st(folder: Path, texts: list[str], device: str, dtype: Any, repeat: int) -> tuple[float, np.ndarray]:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(folder), device=device)
    st.to(dtype)
    st.encode(texts[:64], batch_size=32)  # warm-up
    return timed(lambda: st.encode(texts, batch_size=32, convert_to_numpy=True), device, repeat)


def make_encoder(folder: Path, precision: str, attention: str, sparse: bool, max_tokens: int, max_rows: int) -> Any:
    from embedder.encoder import Encoder
    from embedder.settings import BatchConfig, ChunkingConfig, ModelConfig

    cfg = ModelConfig(name=str(folder), precision=precision, attention=attention, sparse=sparse)  # type: ignore[arg-type]
    return Encoder(cfg, BatchConfig(max_tokens=max_tokens, max_rows=max_rows), ChunkingConfig())


def run_encoder(enc: Any, rows: Any, device: str, repeat: int) -> tuple[float, Any]:
    enc.embed_rows(rows.take(np.arange(min(64, len(rows)))))  # warm-up
    return timed(lambda: enc.embed_rows(rows), device, repeat)


def bare_batches(enc: Any, rows: Any, max_tokens: int, max_rows: int) -> list[dict[str, Any]]:
    """The encoder's own batches, built once and moved to the device: what a bare forward pass consumes."""
    import torch

    from embedder.batching import pack_batches

    runner = enc.runner
    out = []
    for batch in pack_batches(rows.lengths, max_tokens, max_rows, padded=not runner.unpadded):
        if runner.unpadded:
            p = rows.packed(batch, runner.position_offset)
            cu = torch.from_numpy(p.cu_seqlens).to(runner.device)
            out.append({"input_ids": torch.from_numpy(p.ids)[None].to(runner.device),
                        "position_ids": torch.from_numpy(p.positions)[None].to(runner.device),
                        "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": p.max_len, "max_length_k": p.max_len})
        else:
            ids, mask = rows.padded(batch, enc.model.pad_id)
            out.append({"input_ids": torch.from_numpy(ids).to(runner.device),
                        "attention_mask": torch.from_numpy(mask).to(runner.device)})
    return out


def run_bare(enc: Any, batches: list[dict[str, Any]], device: str, repeat: int) -> float:
    import torch

    hf = enc.model.st.transformers_model

    def go() -> None:
        with torch.inference_mode():
            for b in batches:
                hf(**b)

    with torch.inference_mode():
        hf(**batches[-1])  # warm-up
    return timed(go, device, repeat)[0]


def bench_model(spec: ModelSpec, args: argparse.Namespace, device: str, peak: float | None,
                measured: float | None, workdir: Path) -> list[dict[str, Any]]:
    import torch

    from embedder.token_rows import TokenRows

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    precision = "fp16" if device.startswith("cuda") else "fp32"
    t0 = time.perf_counter()
    folder = build_model(spec, workdir / spec.name, device)
    lengths = chunk_lengths(document_lengths(spec, args.tiny, args.reps), spec.max_seq)
    texts = texts_of(lengths)
    lens = np.asarray(lengths, dtype=np.int64)
    flops = model_flops(spec, lens)
    print(f"\n== {spec.name}: {spec.layers} layers, hidden {spec.hidden}, {len(lens)} chunks, {int(lens.sum())} tokens "
          f"(max {lens.max()}, mean {lens.mean():.0f}), {flops / 1e12:.1f} TFLOP of model work, "
          f"built in {time.perf_counter() - t0:.1f}s", flush=True)
    results: list[dict[str, Any]] = []

    def record(name: str, secs: float, note: str = "") -> None:
        row = {"model": spec.name, "run": name, "seconds": round(secs, 4), "tokens_per_s": round(lens.sum() / secs),
               "mfu_vs_spec": round(flops / secs / peak, 4) if peak else None,
               "mfu_vs_matmul": round(flops / secs / measured, 4) if measured else None, "note": note}
        results.append(row)
        mfu = f"{row['mfu_vs_spec']:.1%}" if peak else "n/a"
        mfu2 = f"{row['mfu_vs_matmul']:.1%}" if measured else "n/a"
        print(f"{name:34s} {secs:9.3f}s {row['tokens_per_s']:>12,} tok/s  MFU {mfu:>6s} (vs matmul {mfu2:>6s})  {note}",
              flush=True)

    st_dense = None
    try:
        secs, st_dense = run_st(folder, texts, device, dtype, args.repeat)
        record("st.encode fp16 bs32" if precision == "fp16" else "st.encode fp32 bs32", secs, "tokenizes too")
    except Exception:  # one failing run must not lose the others
        traceback.print_exc()
    base = results[0]["seconds"] if results else None

    for attention in ("padded", "unpadded"):
        for sparse in ([True, False] if spec.sparse else [False]):
            name = f"encoder {attention}{' +sparse' if sparse else ''}"
            try:
                enc = make_encoder(folder, precision, attention, sparse, args.max_tokens, args.max_rows)
            except ValueError as e:
                print(f"{name:34s} not available here: {e}", flush=True)
                continue
            try:
                chunks = enc.tokenizer.passages(texts)
                assert chunks.lengths.tolist() == lengths, "the texts must tokenize to the planned lengths"
                rows = TokenRows.from_list(chunks.input_ids)
                secs, emb = run_encoder(enc, rows, device, args.repeat)
                impl = enc.model.attention.implementation
                fid = ""
                if st_dense is not None:
                    fid = f"max |encoder - st| {np.abs(emb.dense - st_dense).max():.1e}"
                speed = f", {base / secs:.2f}x st.encode" if base else ""
                record(name, secs, f"{impl}{speed}; tokens run incl. padding {int(emb.widths.sum())}; {fid}")
                if not sparse:
                    bare = run_bare(enc, bare_batches(enc, rows, args.max_tokens, args.max_rows), device, args.repeat)
                    record(f"bare {attention} forward", bare, f"encoder / bare time: {secs / bare:.3f}")
            except Exception:
                traceback.print_exc()
            finally:
                del enc
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
    return results


def write_lengths() -> None:
    from transformers import AutoTokenizer

    from sample.corpus import documents

    tok = AutoTokenizer.from_pretrained(str(ROOT / ".cache/models/multilingual-e5-small"))
    tok.model_max_length = 1 << 30
    docs = documents()
    LENGTHS_FILE.write_text(json.dumps({
        "about": "Token counts (special tokens included, no prompt) of the 610 documents of sample/corpus.py with "
                 "the XLM-R tokenizer of multilingual-e5-small (BGE-M3 uses the same vocabulary). Written by "
                 "python benchmarks/gpu.py --write-lengths (needs `make model`).",
        "lengths": [len(tok(d.text)["input_ids"]) for d in docs], "kinds": [d.kind for d in docs]}) + "\n")
    print(f"wrote {LENGTHS_FILE}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny configs on CPU (seconds): keeps the script from rotting")
    p.add_argument("--reps", type=int, default=8, help="copies of the sample corpus per model (full size)")
    p.add_argument("--repeat", type=int, default=2, help="timed repetitions per run (best is reported)")
    p.add_argument("--max-tokens", type=int, default=None, help="encoder token budget (65536; tiny: 512)")
    p.add_argument("--max-rows", type=int, default=None, help="encoder rows per batch (1024; tiny: 16)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense fp16 peak of this device")
    p.add_argument("--out", type=Path, help="write the results as JSON")
    p.add_argument("--write-lengths", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.write_lengths:
        write_lengths()
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedder.models.loader").setLevel(logging.INFO)  # which attention each encoder uses
    import torch
    import transformers

    transformers.logging.set_verbosity_error()  # the random models have no pooler: its "missing" report is noise

    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.max_tokens = args.max_tokens or (512 if args.tiny else 65536)
    args.max_rows = args.max_rows or (16 if args.tiny else 1024)
    if args.tiny:
        args.repeat = 1
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in PEAKS.items() if k in name), None)
    measured = measured_peak(device)
    import sentence_transformers

    print(f"device {name}; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"sentence-transformers {sentence_transformers.__version__}; spec peak "
          f"{peak / 1e12 if peak else 'n/a'} TFLOP/s, measured fp16 matmul "
          f"{measured / 1e12 if measured else 'n/a'} TFLOP/s; budget {args.max_tokens} tokens, {args.max_rows} rows")
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        for spec in TINY if args.tiny else FULL:
            results += bench_model(spec, args, device, peak, measured, Path(tmp))
    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f}s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": name, "torch": torch.__version__, "seconds": round(total, 1),
                                        "spec_peak": peak, "measured_peak": measured, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
