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


def tiny_t5_encoder(d_model: int, *, vocab_size: int = TINY_VOCAB, num_layers: int = 2):
    """A randomly initialised ``T5EncoderModel`` of width ``d_model`` (4 heads of 8, feed-forward 37), eval mode:
    the text encoder of every tiny pipeline whose family uses T5."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=37, num_layers=num_layers, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0,
    )  # fmt: skip
    return T5EncoderModel(config).eval()


def finish(pipe, dtype):
    """A tiny pipeline ready for tests: no progress bar, in ``dtype`` (float32 as built)."""
    import torch

    pipe.set_progress_bar_config(disable=True)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
