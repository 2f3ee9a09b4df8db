"""TextTokenizer: prefixes, instructions, special tokens and long-document policies (chunk/truncate/error).

Expectations are computed with the model's own Hugging Face tokenizer, independently of
``embedder.tokenize`` and ``embedder.chunking``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from embedder.models.info import ModelInfo, load_model_info
from embedder.settings import ChunkingConfig, ModelConfig
from embedder.tokenize import Chunks, TextTokenizer
from tests.tiny_model import CORPUS

SHORT = [
    "The quick brown fox jumps over the lazy dog.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "Hund",
    "빠른 갈색 여우가 게으른 개를 뛰어넘는다.",
]


@pytest.fixture(scope="module")
def tiny_info(tiny_m3_dir: Path) -> ModelInfo:
    return load_model_info(ModelConfig(name=str(tiny_m3_dir)))


@pytest.fixture(scope="module")
def e5_info(e5_model_dir: Path) -> ModelInfo:
    return load_model_info(ModelConfig(name=str(e5_model_dir)))


@pytest.fixture(params=["tiny", "e5"])
def info(request: pytest.FixtureRequest) -> ModelInfo:
    return request.getfixturevalue(f"{request.param}_info")


def make(info: ModelInfo, chunking: ChunkingConfig | None = None, **model: object) -> TextTokenizer:
    return TextTokenizer(info, ModelConfig(name=info.path, **model), chunking or ChunkingConfig())  # type: ignore[arg-type]


@functools.cache
def hf_tokenizer(path: str):  # noqa: ANN201
    """transformers' own tokenizer of the folder: the reference (the job may use tokenizer.json directly)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def hf_ids(info: ModelInfo, text: str, **kw: object) -> list[int]:
    return list(hf_tokenizer(info.path)(text, **kw)["input_ids"])


def ids_of(chunks: Chunks) -> list[list[int]]:
    return [x.tolist() for x in chunks.input_ids]


def squash(s: str) -> str:
    return " ".join(s.split())


# ---------------------------------------------------------------- long documents

# Per model: the prefix, window and overlap of the chunking test, and how often CORPUS is repeated.
LONG_CASES = {
    "tiny": ({"passage_prefix": "passage: "}, ChunkingConfig(chunk_tokens=48, overlap=8), 10),
    "e5": ({}, ChunkingConfig(overlap=32), 25),  # default prefix (the model's prompt) and window (512)
}


@pytest.fixture(params=sorted(LONG_CASES))
def long_case(request: pytest.FixtureRequest) -> tuple[ModelInfo, TextTokenizer, str, str, ChunkingConfig]:
    info = request.getfixturevalue(f"{request.param}_info")
    model_kw, chunking, reps = LONG_CASES[request.param]
    tt = make(info, chunking, **model_kw)
    text = " ".join(CORPUS * reps)
    prefix = model_kw.get("passage_prefix", info.passage_prompt)
    return info, tt, text, prefix, chunking


def test_long_document_is_chunked(long_case) -> None:
    info, tt, text, prefix, chunking = long_case
    tok = info.tokenizer
    window = chunking.chunk_tokens or info.max_seq_length
    overlap = chunking.overlap
    assert prefix, "the test needs a non-empty prefix"

    full = hf_ids(info, prefix + text, add_special_tokens=False)
    assert len(full) > 2000, "several thousand tokens"
    p_ids = hf_ids(info, prefix, add_special_tokens=False)
    assert full[: len(p_ids)] == p_ids
    body = full[len(p_ids):]
    head, tail = [tok.cls_token_id], [tok.sep_token_id]
    assert hf_ids(info, "x")[:1] == head and hf_ids(info, "x")[-1:] == tail

    chunks = tt.passages(["Hund", text, "Reset the router."])
    assert chunks.errors == {}
    mine = [k for k, d in enumerate(chunks.doc) if d == 1]
    n = len(mine)
    assert n > 3
    assert chunks.doc == [0] + [1] * n + [2], "chunks stay in document order"
    assert [chunks.chunk_index[k] for k in mine] == list(range(n))
    assert not any(chunks.truncated)

    per_window = window - len(head) - len(p_ids) - len(tail)
    bodies = []
    for k in mine:
        ids = chunks.input_ids[k].tolist()
        assert len(ids) <= window
        assert ids[: len(head) + len(p_ids)] == head + p_ids, "every chunk starts with the specials and the prefix"
        assert ids[-len(tail):] == tail
        bodies.append(ids[len(head) + len(p_ids): len(ids) - len(tail)])
    assert all(len(b) == per_window for b in bodies), "full windows when the document is this long"

    # The windows tile the body: consecutive windows share exactly `overlap` tokens, the last at least that.
    start = 0
    for k, b in enumerate(bodies[:-1]):
        assert body[start: start + len(b)] == b, f"window {k}"
        start += len(b) - overlap
    last_start = len(body) - len(bodies[-1])
    assert body[last_start:] == bodies[-1]
    assert last_start <= start, "the last window overlaps its predecessor by at least `overlap`"
    assert last_start > start - per_window

    # Character spans: inside the text, in order, covering it without gaps, matching the chunk's tokens.
    spans = [chunks.spans[k] for k in mine]
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (a0, b0), (a1, b1) in zip(spans, spans[1:]):
        assert a0 < a1 <= b0 < b1
    for (a, b), toks in zip(spans, bodies):
        assert squash(tok.decode(toks)) == squash(text[a:b])

    # Deterministic.
    again = tt.passages(["Hund", text, "Reset the router."])
    assert ids_of(again) == ids_of(chunks) and again.spans == chunks.spans


def test_long_document_truncate(long_case) -> None:
    info, _, text, prefix, chunking = long_case
    tt = make(info, ChunkingConfig(long_docs="truncate", chunk_tokens=chunking.chunk_tokens, overlap=chunking.overlap),
              passage_prefix=prefix)
    window = chunking.chunk_tokens or info.max_seq_length
    chunks = tt.passages([text, "Hund"])
    assert chunks.doc == [0, 1] and chunks.chunk_index == [0, 0]
    assert chunks.truncated == [True, False]
    # Same ids as the Hugging Face tokenizer's own truncation (specials kept).
    assert chunks.input_ids[0].tolist() == hf_ids(info, prefix + text, truncation=True, max_length=window)
    a, b = chunks.spans[0]
    assert a == 0 and 0 < b < len(text)
    assert chunks.errors == {}


def test_long_document_error(long_case) -> None:
    info, _, text, prefix, chunking = long_case
    tt = make(info, ChunkingConfig(long_docs="error", chunk_tokens=chunking.chunk_tokens, overlap=chunking.overlap),
              passage_prefix=prefix)
    chunks = tt.passages(["Hund", text, "fox"])
    assert list(chunks.errors) == [1]
    window = chunking.chunk_tokens or info.max_seq_length
    assert str(window) in chunks.errors[1] and "long_docs" in chunks.errors[1]
    n_tokens = len(hf_ids(info, prefix + text))
    assert str(n_tokens) in chunks.errors[1]
    assert chunks.doc == [0, 2], "the failed document has no chunk"
    assert len(chunks.input_ids) == len(chunks.spans) == len(chunks.truncated) == 2


def test_document_at_the_limit_is_kept_one_token_more_is_not(tiny_info: ModelInfo) -> None:
    tt = make(tiny_info, ChunkingConfig(long_docs="error", chunk_tokens=40, overlap=4))
    words = " ".join(CORPUS).split()
    fits, over = "", ""
    for i in range(1, len(words)):  # the longest word prefix that fits 40 tokens with specials, and the next one
        text = " ".join(words[:i])
        if len(hf_ids(tiny_info, text)) > 40:
            over = text
            break
        fits = text
    assert 36 <= len(hf_ids(tiny_info, fits)) <= 40 and over
    chunks = tt.passages([fits, over])
    assert list(chunks.errors) == [1]
    assert chunks.doc == [0] and ids_of(chunks) == [hf_ids(tiny_info, fits)]


# ---------------------------------------------------------------- short documents, prefixes, instructions


def test_short_documents_tokenize_like_the_model(info: ModelInfo) -> None:
    tt = make(info)
    chunks = tt.passages(SHORT)
    assert chunks.doc == list(range(len(SHORT))) and chunks.chunk_index == [0] * len(SHORT)
    assert ids_of(chunks) == [hf_ids(info, tt.passage_prefix + t) for t in SHORT]
    assert chunks.spans == [(0, len(t)) for t in SHORT]
    assert chunks.truncated == [False] * len(SHORT)
    assert chunks.lengths.tolist() == [len(x) for x in ids_of(chunks)]


def test_queries_tokenize_like_the_model(info: ModelInfo) -> None:
    tt = make(info)
    assert ids_of(tt.queries(SHORT)) == [hf_ids(info, tt.query_prefix + t) for t in SHORT]


def test_prefix_defaults_come_from_the_model_prompts(e5_info: ModelInfo, tiny_info: ModelInfo) -> None:
    e5 = make(e5_info)
    assert (e5.passage_prefix, e5.query_prefix) == ("passage: ", "query: ")
    assert ids_of(e5.passages(["Hund"])) == [hf_ids(e5_info, "passage: Hund")]
    assert ids_of(e5.queries(["Hund"])) == [hf_ids(e5_info, "query: Hund")]
    tiny = make(tiny_info)  # its prompts are empty strings
    assert (tiny.passage_prefix, tiny.query_prefix) == ("", "")


def test_explicit_empty_prefix_disables_the_prompt(e5_info: ModelInfo) -> None:
    tt = make(e5_info, passage_prefix="", query_prefix="")
    assert ids_of(tt.passages(SHORT)) == [hf_ids(e5_info, t) for t in SHORT]
    assert ids_of(tt.queries(SHORT)) == [hf_ids(e5_info, t) for t in SHORT]
    custom = make(e5_info, passage_prefix="doc: ", query_prefix="q: ")
    assert ids_of(custom.passages(["Hund"])) == [hf_ids(e5_info, "doc: Hund")]
    assert ids_of(custom.queries(["Hund"])) == [hf_ids(e5_info, "q: Hund")]


def test_query_instruction_template(e5_info: ModelInfo) -> None:
    task = "Given a question, find the answer"
    tt = make(e5_info, query_instruction=task)
    want = f"Instruct: {task}\nQuery: Wie setze ich den Router zurück?"
    assert tt.query_text("Wie setze ich den Router zurück?") == want  # replaces the "query: " prompt
    assert ids_of(tt.queries(["Wie setze ich den Router zurück?"])) == [hf_ids(e5_info, want)]
    # Passages are not affected by the instruction.
    assert ids_of(tt.passages(["Hund"])) == [hf_ids(e5_info, "passage: Hund")]
    custom = make(e5_info, query_instruction=task, instruction_template="<{task}> {text}")
    assert custom.query_text("x") == f"<{task}> x"


def test_instruction_template_must_contain_text() -> None:
    with pytest.raises(ValueError, match=r"\{text\}"):
        ModelConfig(name="m", query_instruction="t", instruction_template="Instruct: {task}")


def test_chunk_tokens_over_the_model_limit_is_an_error(tiny_info: ModelInfo) -> None:
    with pytest.raises(ValueError, match=r"65.*64"):
        make(tiny_info, ChunkingConfig(chunk_tokens=65, overlap=4))


@pytest.mark.parametrize("kw", [{"chunk_tokens": 8, "overlap": 8}, {"overlap": -1}, {"long_docs": "split"}])
def test_chunking_config_validation(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ChunkingConfig(**kw)  # type: ignore[arg-type]


def test_queries_are_cut_at_the_model_limit_not_chunk_tokens(tiny_info: ModelInfo) -> None:
    tt = make(tiny_info, ChunkingConfig(chunk_tokens=40, overlap=8))
    q = "Быстрая коричневая лиса прыгает через ленивую собаку."
    assert 40 < len(hf_ids(tiny_info, q)) <= tiny_info.max_seq_length
    assert ids_of(tt.queries([q])) == [hf_ids(tiny_info, q)]


def test_prefix_longer_than_the_window_is_a_clear_error(tiny_info: ModelInfo) -> None:
    # "passage: " is 10 tokens with the tiny tokenizer; a 12-token window leaves 10 for prefix and body.
    with pytest.raises(ValueError, match="prefix"):
        make(tiny_info, ChunkingConfig(chunk_tokens=12, overlap=2), passage_prefix="passage: ")
