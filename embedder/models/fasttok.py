"""A model's ``tokenizer.json`` through the ``tokenizers`` library alone: no transformers, no torch.

The read tasks and the driver only turn text into ids. Loading transformers' tokenizer for that
imports torch (transformers imports it unconditionally): about 2.5 s more start-up and a few
hundred MB more memory in every CPU worker. For the generic tokenizer classes below,
transformers calls exactly this backend (``encode_batch`` without padding or truncation), so the
ids and offsets are the same; the embed actor, which loads transformers anyway, checks that on
the real model (:func:`check_same_ids`) before it embeds anything. Other folders use
transformers' tokenizer, as before.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The generic classes, which transformers runs on tokenizer.json unchanged. Model-specific classes
# are not: transformers 5 rebuilds e.g. XLMRobertaTokenizer's pipeline in Python (WhitespaceSplit +
# Metaspace, without tokenizer.json's normalizer), which changes offsets and can change ids, so
# models that name such a class (BGE-M3, the hub's multilingual-e5) keep transformers' tokenizer.
BACKEND_CLASSES = {"PreTrainedTokenizerFast", "TokenizersBackend"}
SPECIAL = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
PROBES = ["x", "passage: ", "query: how do I reset my wifi router?", "Wie entkalke ich meine Kaffeemaschine?",
          "コーヒーメーカーの水垢を取る方法", "كيف أعيد ضبط جهاز التوجيه", "Как заменить цепь велосипеда",
          "Cafe\u0301 crème brûlée, naïve façade", "  spaced\tout \n lines  ", "emoji 🙂👍🏽 and ZWJ 👨‍👩‍👧",
          "हिंदी में एक वाक्य", "한국어 문장입니다", "Tiếng Việt có dấu", "<s> literal </s> tokens <pad>", ""]


class FastTokenizer:
    """The subset of transformers' tokenizer API the embedder uses, on a ``tokenizers.Tokenizer``."""

    def __init__(self, backend: Any, config: dict[str, Any], special_map: dict[str, Any]) -> None:
        self.backend = backend
        self.model_max_length = int(config.get("model_max_length") or 1 << 30)
        for name in SPECIAL:
            token = config.get(f"{name}_token") or special_map.get(f"{name}_token")
            content = token.get("content") if isinstance(token, dict) else token
            setattr(self, f"{name}_token_id", backend.token_to_id(content) if content else None)

    @classmethod
    def load(cls, folder: str | Path, *, trust_remote_code: bool = False) -> FastTokenizer | None:
        """The folder's tokenizer, or None when it needs transformers (no tokenizer.json, another class)."""
        folder = Path(folder)
        config = _json(folder / "tokenizer_config.json")
        if trust_remote_code or config is None or "auto_map" in config or not (folder / "tokenizer.json").exists():
            return None
        if config.get("tokenizer_class") not in BACKEND_CLASSES:
            return None
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        backend.no_padding()
        backend.no_truncation()
        return cls(backend, config, _json(folder / "special_tokens_map.json") or {})

    def __len__(self) -> int:
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return str(self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def __call__(self, text: str | Sequence[str], *, add_special_tokens: bool = True,
                 return_offsets_mapping: bool = False, **_unused: Any) -> dict[str, Any]:
        """``input_ids`` (and ``offset_mapping``) of one text, or of each text of a list."""
        single = isinstance(text, str)
        encodings = self.backend.encode_batch([text] if single else list(text), add_special_tokens=add_special_tokens)
        out: dict[str, Any] = {"input_ids": [e.ids for e in encodings]}
        if return_offsets_mapping:
            out["offset_mapping"] = [e.offsets for e in encodings]
        return {k: v[0] for k, v in out.items()} if single else out


def check_same_ids(name: str, reference: Any, ours: Any) -> None:
    """The embed actor's check that ``ours`` tokenizes like transformers' ``reference``.

    Raises:
        ValueError: They differ (ids, offsets or special tokens); names the first difference.
    """
    if not isinstance(ours, FastTokenizer):
        return
    for attr in (f"{n}_token_id" for n in SPECIAL):
        if getattr(reference, attr, None) != getattr(ours, attr):
            raise ValueError(f"{name}: tokenizer.json gives {attr}={getattr(ours, attr)} but transformers' tokenizer "
                             f"{getattr(reference, attr, None)}; please report this model's tokenizer_class")
    for specials in (False, True):
        want = reference(PROBES, add_special_tokens=specials, return_offsets_mapping=True)
        got = ours(PROBES, add_special_tokens=specials, return_offsets_mapping=True)
        for i, text in enumerate(PROBES):
            same_ids = list(want["input_ids"][i]) == list(got["input_ids"][i])
            same_offsets = [tuple(o) for o in want["offset_mapping"][i]] == [tuple(o) for o in got["offset_mapping"][i]]
            if not (same_ids and same_offsets):
                raise ValueError(f"{name}: tokenizer.json and transformers' tokenizer disagree on {text!r} "
                                 f"({list(got['input_ids'][i])} vs {list(want['input_ids'][i])}); please report this "
                                 "model's tokenizer_class")


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
