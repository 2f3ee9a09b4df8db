"""A folder that is not a model fails at start-up with what it lacks (issue #10 item 6), before any loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from embedder.models.info import load_model_info
from embedder.settings import ModelConfig


def info_error(folder: Path) -> str:
    with pytest.raises(FileNotFoundError) as e:
        load_model_info(ModelConfig(name=str(folder)))
    assert repr(str(folder)) in str(e.value), "the message names model.name"
    return str(e.value)


def test_empty_folder_lacks_everything(tmp_path: Path) -> None:
    msg = info_error(tmp_path)
    assert "modules.json" in msg and "config.json" in msg and "weights" in msg
    assert "model.safetensors" in msg and "pytorch_model.bin" in msg and ".index.json" in msg


def test_each_missing_piece_is_named_alone(tiny_m3_dir: Path, tmp_path: Path) -> None:
    for missing in ("modules.json", "config.json", "model.safetensors"):
        folder = tmp_path / missing
        shutil.copytree(tiny_m3_dir, folder)
        (folder / missing).unlink()
        msg = info_error(folder)
        named = {"modules.json": "modules.json", "config.json": "config.json", "model.safetensors": "weights"}
        for piece, word in named.items():
            assert (word in msg.split("lacks", 1)[1].split(". Give")[0]) == (piece == missing), (missing, msg)


def test_sharded_or_bin_weights_and_a_transformer_subfolder_are_accepted(tiny_m3_dir: Path, tmp_path: Path) -> None:
    from embedder.models.source import check_model_folder

    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_m3_dir, sharded)
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00001.safetensors")
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    check_model_folder(sharded, "sharded")

    # Older sentence-transformers layout: the transformer in 0_Transformer/, config and weights there.
    old = tmp_path / "old-layout"
    old.mkdir()
    (old / "0_Transformer").mkdir()
    (old / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "0_Transformer",
                                                    "type": "sentence_transformers.models.Transformer"}]))
    (old / "0_Transformer" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"weights in 0_Transformer/") as e:
        check_model_folder(old, "old")
    assert "config.json" not in str(e.value).split("lacks", 1)[1].split(". Give")[0]
    (old / "0_Transformer" / "pytorch_model.bin").write_bytes(b"")
    check_model_folder(old, "old")


def test_a_real_model_passes(tiny_m3_dir: Path) -> None:
    assert load_model_info(ModelConfig(name=str(tiny_m3_dir))).has_sparse_head
