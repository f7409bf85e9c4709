"""Shared pieces of the tiny offline test pipelines (not a family file)."""

from __future__ import annotations

TINY_VOCAB = 64


def tiny_tokenizer(model_max_length: int = 512, vocab_size: int = TINY_VOCAB):
    """A word-level fast tokenizer built in memory: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, then ``w3`` ... ``w{n-1}``.

    Any text works (unknown words become ``<unk>``); pipelines call it like any Hugging Face tokenizer (padding,
    truncation, ``return_tensors``).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=model_max_length
    )
