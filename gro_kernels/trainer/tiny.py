"""Tiny models and tokenizers built entirely in code (no downloads): for the demo, tests and benchmarks."""

from typing import Iterable

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


def char_tokenizer(alphabet: Iterable[str]):
    """A character-level Hugging Face tokenizer over `alphabet`, with <pad>/<bos>/<eos>/<unk>.

    It is a real PreTrainedTokenizerFast (WordLevel model, one token per character, BOS prepended),
    so the trainer is exercised through the same interface as a downloaded tokenizer.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = list(dict.fromkeys(alphabet))
    for c in chars:
        if len(c) != 1:
            raise ValueError(f"alphabet must hold single characters, got {c!r}")
    vocab = {tok: i for i, tok in enumerate(list(SPECIAL_TOKENS) + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>")


def tiny_llama(tokenizer, **overrides):
    """A randomly initialised LlamaForCausalLM sized for CPU tests (fp32, eager attention, untied head)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    options = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
                   attn_implementation="eager")
    options.update(overrides)
    options.setdefault("vocab_size", len(tokenizer))
    config = LlamaConfig(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **options)
    return LlamaForCausalLM(config)
