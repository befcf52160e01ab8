"""A tiny saved model + in-code tokenizer + tiny datasets for running TRL's real trainers on CPU."""

import copy

import torch

from tests.integrations.tiny_models import tiny_causal_lm

WORDS = 1000  # ordinary tokens "w0" .. "w999" after the 4 specials: V = 1004 >= 1000


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"w{i}": 4 + i for i in range(WORDS)})
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    tok.padding_side = "left"
    return tok


def save_tiny_model(tmp_path, family="llama"):
    """The model dir (config + weights + tokenizer): both trainers of a comparison load the same weights."""
    model = tiny_causal_lm(family, vocab_size=4 + WORDS)
    path = tmp_path / f"tiny-{family}"
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return str(path)


def sentence(rng, n):
    return " ".join(f"w{int(i)}" for i in torch.randint(0, WORDS, (n,), generator=rng))


def prompts(n=8, seed=0):
    from datasets import Dataset

    rng = torch.Generator().manual_seed(seed)
    return Dataset.from_dict({"prompt": [sentence(rng, 5) for _ in range(n)]})


def preference_data(n=8, seed=0):
    from datasets import Dataset

    rng = torch.Generator().manual_seed(seed)
    return Dataset.from_dict({"prompt": [sentence(rng, 4) for _ in range(n)],
                              "chosen": [sentence(rng, 6) for _ in range(n)],
                              "rejected": [sentence(rng, 5) for _ in range(n)]})


def kto_data(n=8, seed=0):
    from datasets import Dataset

    rng = torch.Generator().manual_seed(seed)
    return Dataset.from_dict({"prompt": [sentence(rng, 4) for _ in range(n)],
                              "completion": [sentence(rng, 6) for _ in range(n)],
                              "label": [i % 2 == 0 for i in range(n)]})


def sft_data(n=8, seed=0):
    from datasets import Dataset

    rng = torch.Generator().manual_seed(seed)
    return Dataset.from_dict({"text": [sentence(rng, 12) for _ in range(n)]})


def reward_small_ids(completions, **kwargs):
    """A reward in code: the fraction of completion words with a small id (varies across a group)."""
    out = []
    for text in completions:
        words = [w for w in text.split() if w.startswith("w")]
        out.append(sum(int(w[1:]) < 500 for w in words) / max(len(words), 1))
    return out


def common_args(tmp_path, **extra):
    """TrainingArguments shared by every config: CPU, fp32 (TRL defaults to bf16), plain SGD (no Adam
    normalisation amplifying the 1e-7 differences of two exact heads), no saving or reporting."""
    return dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, fp16=False, max_steps=2,
                learning_rate=0.05, optim="sgd", lr_scheduler_type="constant", report_to="none",
                save_strategy="no", logging_steps=1, seed=0, data_seed=0, gradient_checkpointing=False,
                dataloader_num_workers=0, disable_tqdm=True, **extra)


def capture_first_inputs(trainer):
    """Wrap trainer.compute_loss to keep a deep copy of the first inputs it sees."""
    seen = []
    real = trainer.compute_loss

    def compute_loss(model, inputs, *args, **kwargs):
        if not seen:
            seen.append(copy.deepcopy({k: v.detach().clone() if torch.is_tensor(v) else v
                                       for k, v in inputs.items()}))
        return real(model, inputs, *args, **kwargs)

    trainer.compute_loss = compute_loss
    return seen


def loss_and_grads(trainer, inputs, state):
    """compute_loss on `inputs` from the parameters `state`, and every parameter's gradient."""
    model = trainer.model
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    model.train()
    loss = trainer.compute_loss(model, copy.deepcopy(inputs))
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def max_rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30)).item()
