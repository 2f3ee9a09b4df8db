"""Build a tiny random BGE-M3-shaped model (XLM-R encoder, CLS pooling, normalize, sparse head).

Weights are random: good for checking that our math equals the reference formulas, not for
retrieval quality (that uses the offline multilingual-e5-small).
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "素早い茶色の狐がのろまな犬を飛び越える。",
    "الثعلب البني السريع يقفز فوق الكلب الكسول.",
    "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।",
    "빠른 갈색 여우가 게으른 개를 뛰어넘는다.",
    "Reset the router by holding the button for ten seconds.",
    "Descale the coffee machine every month with citric acid.",
]


def build_tiny_m3(out: Path, *, max_seq_length: int = 64, seed: int = 0) -> Path:
    """Write a sentence-transformers folder with a random XLM-R encoder and ``sparse_linear.pt``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    if (out / "sparse_linear.pt").exists():
        return out
    torch.manual_seed(seed)
    hf = out.with_name(out.name + "-hf")
    spm = SentencePieceUnigramTokenizer()
    spm.train_from_iterator(CORPUS * 4, vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                            unk_token="<unk>", show_progress=False)
    from tokenizers.processors import TemplateProcessing

    spm.post_processor = TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                            special_tokens=[("<s>", 0), ("</s>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=spm, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                  sep_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                  model_max_length=max_seq_length)
    tok.save_pretrained(hf)
    config = XLMRobertaConfig(vocab_size=spm.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=64, max_position_embeddings=max_seq_length + 2,
                              pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1)
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(hf)
    transformer = Transformer(str(hf), max_seq_length=max_seq_length)
    st = SentenceTransformer(modules=[transformer, Pooling(32, "cls"), Normalize()], device="cpu")
    st.save(str(out))
    head = torch.nn.Linear(32, 1)
    torch.nn.init.normal_(head.weight, std=0.5)
    torch.nn.init.constant_(head.bias, 0.05)
    torch.save(head.state_dict(), out / "sparse_linear.pt")
    return out
