"""What a fresh read worker pays to get its tokenizer: tokenizer.json alone vs transformers.

Each measurement is a new Python process (as a new Ray worker is) that loads the offline e5
tokenizer, either through ``embedder.models.info.load_model_info`` (the ``tokenizers`` library,
``embedder/models/fasttok.py``) or through ``transformers.AutoTokenizer`` (which imports torch),
then tokenizes the bundled sample corpus once. Runs alternate; medians are printed with the ratio.

    python benchmarks/tokenizer_load.py [--model .cache/models/multilingual-e5-small] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PROBE = r"""
import json, resource, sys, time
t0 = time.perf_counter()
mode, model = sys.argv[1], sys.argv[2]
if mode == "fasttok":
    from embedder.models.info import load_model_info
    from embedder.settings import ModelConfig
    tok = load_model_info(ModelConfig(name=model)).tokenizer
else:
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model)
loaded = time.perf_counter() - t0
from sample.corpus import documents
texts = ["passage: " + d.text for d in documents()]
t1 = time.perf_counter()
ids = tok(texts, add_special_tokens=False, return_offsets_mapping=True)["input_ids"]
print(json.dumps({"load_s": loaded, "tokenize_s": time.perf_counter() - t1, "tokens": sum(len(x) for x in ids),
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "torch_imported": "torch" in sys.modules}))
"""


def measure(mode: str, model: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode, model], cwd=REPO, check=True, capture_output=True,
                         text=True, env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(REPO / ".cache/models/multilingual-e5-small"))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"fasttok": [], "transformers": []}
    for _ in range(args.repeats):
        for mode in runs:
            runs[mode].append(measure(mode, args.model))
    med = {m: {k: statistics.median(float(r[k]) for r in rs) for k in ("load_s", "tokenize_s", "max_rss_mb")}
           for m, rs in runs.items()}
    tokens = {r["tokens"] for rs in runs.values() for r in rs}
    print(f"model {args.model}; {args.repeats} fresh processes each; tokens per run {sorted(tokens)}")
    print(f"{'':14} {'load s':>8} {'tokenize s':>11} {'peak RSS MB':>12} torch imported")
    for m, v in med.items():
        torch = runs[m][0]["torch_imported"]
        print(f"{m:14} {v['load_s']:8.2f} {v['tokenize_s']:11.2f} {v['max_rss_mb']:12.0f} {torch}")
    f, t = med["fasttok"], med["transformers"]
    print(f"ratio fasttok/transformers: load {f['load_s'] / t['load_s']:.2f}, tokenize "
          f"{f['tokenize_s'] / t['tokenize_s']:.2f}, peak RSS {f['max_rss_mb'] / t['max_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
