"""Read tasks tokenize with tokenizer.json alone (no torch), exactly as transformers does, or not at all."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from embedder.models.fasttok import FastTokenizer, check_same_ids
from tests.conftest import REPO_ROOT


def test_model_info_loads_no_torch(e5_model_dir: Path) -> None:
    code = ("import sys; from embedder.models.info import load_model_info; from embedder.settings import ModelConfig; "
            f"i = load_model_info(ModelConfig(name={str(e5_model_dir)!r})); "
            "assert type(i.tokenizer).__name__ == 'FastTokenizer', type(i.tokenizer); "
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


@pytest.mark.parametrize("model", ["e5", "tiny"])
def test_same_ids_offsets_and_special_tokens_as_transformers(model: str, e5_model_dir: Path, tiny_m3_dir: Path,
                                                             small_corpus: list[dict[str, str]]) -> None:
    from transformers import AutoTokenizer

    folder = e5_model_dir if model == "e5" else tiny_m3_dir
    ours, reference = FastTokenizer.load(folder), AutoTokenizer.from_pretrained(folder)
    assert ours is not None
    check_same_ids(model, reference, ours)
    texts = ["passage: " + r["text"] for r in small_corpus]
    want = reference(texts, add_special_tokens=False, return_offsets_mapping=True)
    got = ours(texts, add_special_tokens=False, return_offsets_mapping=True)
    assert [list(x) for x in want["input_ids"]] == got["input_ids"]
    assert [[tuple(o) for o in x] for x in want["offset_mapping"]] == got["offset_mapping"]
    assert len(ours) == len(reference) and ours.pad_token_id == reference.pad_token_id


def test_a_model_specific_class_keeps_transformers_and_the_check_catches_a_difference(
        e5_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    for name in ("tokenizer.json", "special_tokens_map.json", "config.json"):
        shutil.copy(e5_model_dir / name, tmp_path / name)
    config = json.loads((e5_model_dir / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "XLMRobertaTokenizer"}))
    assert FastTokenizer.load(tmp_path) is None  # transformers 5 rebuilds this class' pipeline
    assert FastTokenizer.load(e5_model_dir, trust_remote_code=True) is None

    forced = FastTokenizer.load(e5_model_dir)  # the raw tokenizer.json against the rebuilt pipeline
    with pytest.raises(ValueError, match="disagree on"):
        check_same_ids("xlmr", AutoTokenizer.from_pretrained(tmp_path), forced)
