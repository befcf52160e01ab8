"""Tiny transformers causal LMs built from a config (no downloads), for the integration tests."""

import torch

# Small but real: V >= 1000 so the head is a real share of the work; 2 layers, GQA where the family has it.
BASE = dict(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
            eos_token_id=2)
# family -> config overrides; gemma2/gemma3 softcap lowered so it bends these small logits (30 barely would)
FAMILIES = {
    "llama": {},
    "qwen2": {},
    "qwen3": {},
    "mistral": {},
    "gemma": {},
    "gemma2": dict(final_logit_softcapping=2.0, attn_logit_softcapping=None, sliding_window=64),
    "gemma3_text": dict(final_logit_softcapping=2.0, sliding_window=64),
    "cohere": dict(logit_scale=0.5),
    "granite": dict(logits_scaling=4.0),
}


def tiny_causal_lm(family="llama", seed=0, dtype=torch.float32, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(family, **{**BASE, **FAMILIES.get(family, {}), **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    # Initialized logits are ~0; scale the head so the softmax is far from uniform and softcaps bite.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20.0)  # (the embedding too, where tied)
    return model.eval()


def batch(model, b=3, t=17, seed=1):
    """(input_ids, attention_mask, labels) for `model` (or a vocabulary size)."""
    g = torch.Generator().manual_seed(seed)
    vocab = model if isinstance(model, int) else model.config.get_text_config().vocab_size
    ids = torch.randint(3, vocab, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, :4] = 0  # left padding on one row
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :6] = -100  # a prompt: only the completion is scored
    return ids, mask, labels
