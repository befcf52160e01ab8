"""padding_free: each micro-batch packed into one row (no padding, position_ids restarting per sequence, no
attention_mask). Padding changes nothing mathematically, so the packed run must equal the padded one."""

import json
import math
from pathlib import Path

import pytest
import torch

import gro_kernels
from gro_kernels.trainer import packing, policy
from gro_kernels.trainer.cli import main as cli_main

from tests.support.trainer_support import OFFLINE_PAIRS, frozen_copy, make_trainer, tiny_model, tokenizer

ROOT = Path(__file__).parents[2]
TIMING = ("step_time_s", "tokens_per_s", "peak_mem_mb")


def ragged_rows(seed=0):
    """A padded rollout-shaped batch: left-padded prompts of 2..5 tokens, completions of 0..6 tokens."""
    g = torch.Generator().manual_seed(seed)
    vocab, pad, P, C = len(tokenizer()), tokenizer().pad_token_id, 5, 6
    prompt_lengths, completion_lengths = [5, 2, 3, 4], [6, 1, 0, 3]
    ids = torch.randint(4, vocab, (4, P + C), generator=g)
    attention = torch.zeros(4, P + C, dtype=torch.long)
    keep = torch.zeros(4, C)
    for r, (lp, lc) in enumerate(zip(prompt_lengths, completion_lengths)):
        attention[r, P - lp:P + lc] = 1
        keep[r, :lc] = 1.0
    ids = ids.masked_fill(attention == 0, pad)
    return ids, attention, keep, P


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_forward_gives_the_padded_hidden_states(attn):
    """transformers turns the restarting position_ids into a block-diagonal causal mask: each sequence's hidden
    states in the packed row are those of its own padded row."""
    from transformers.masking_utils import find_packed_sequence_indices

    model = tiny_model(seed=3, attn_implementation=attn).eval()
    ids, attention, keep, P = ragged_rows()
    with torch.no_grad():
        padded = policy.head_inputs(model, ids, attention, keep, P)
        packed = packing.pack(ids, attention, keep, P)
        flat = policy.packed_head_inputs(model, packed)
        # Control: one position run over the whole row is one long sequence, attending across sequences.
        mixed = model.get_decoder()(input_ids=packed.input_ids, use_cache=False).last_hidden_state[0]
    lengths = (attention.sum(1)).tolist()
    seq_ids = find_packed_sequence_indices(packed.position_ids)[0]
    assert seq_ids.tolist() == sum(([i] * n for i, n in enumerate(lengths)), [])
    assert torch.equal(flat.targets, padded.targets[keep.bool()])
    torch.testing.assert_close(flat.hidden, padded.hidden[keep.bool()], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(mixed.index_select(0, packed.index), flat.hidden, atol=1e-3)


def test_pack_layout():
    ids, attention, keep, P = ragged_rows()
    p = packing.pack(ids, attention, keep, P)
    assert p.input_ids.shape == (1, int(attention.sum()))
    assert p.cu_seqlens.tolist() == [0, 6, 7, 7, 10]
    assert p.position_ids[0].tolist() == list(range(11)) + list(range(3)) + list(range(3)) + list(range(7))
    # Each target is the token right after its predicting position in the packed row.
    assert torch.equal(p.input_ids[0, p.index + 1], p.targets)
    values = torch.arange(10, dtype=torch.float32)
    assert torch.equal(packing.flatten(packing.scatter(values, p.keep), p.keep), values)


def step_with_grads(tmp_path, padding_free, ref=False, offline=None, **changes):
    """One train_step; the gradients of its (last) update, taken just before the optimizer step."""
    model = tiny_model(seed=4)
    tr = make_trainer(tmp_path / str(padding_free), model=model, ref=frozen_copy(model) if ref else None,
                      offline=offline, padding_free=padding_free, max_steps=1, **changes)
    grads, step = [], tr._clip_and_step

    def capture():
        grads[:] = [p.grad.detach().clone() for p in tr.model.parameters()]
        return step()
    tr._clip_and_step = capture
    record = {k: v for k, v in tr.train_step().items() if k not in TIMING}
    return record, grads


CASES = {
    "grpo-kl": dict(ref=True, beta=0.2, micro_batch_size=4),             # ref logprobs by the packed path
    "dapo-2-epochs": dict(preset="dapo", num_iterations=2, micro_batch_size=5),  # old logprobs, ratio != 1
    "dr_grpo": dict(preset="dr_grpo"),                                    # fixed-L normalisation
    "reinforce_pp": dict(preset="reinforce_pp", ref=True, beta=0.1),     # per-token advantages
    "gspo": dict(preset="gspo", num_iterations=2),                        # sequence-level ratio
    "hybrid-dpo": dict(mode="hybrid", ref=True, offline=OFFLINE_PAIRS),  # pairs and mixed rows
}


@pytest.mark.parametrize("case", list(CASES))
def test_padding_free_step_equals_padded_step(tmp_path, case):
    changes = dict(CASES[case])
    (rec_a, grads_a), (rec_b, grads_b) = (step_with_grads(tmp_path, pf, **changes) for pf in (False, True))
    assert rec_a.keys() == rec_b.keys()
    for key in rec_a:
        assert rec_b[key] == pytest.approx(rec_a[key], rel=1e-4, abs=1e-6), key
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()) + 1e-8)


def test_padding_free_demo_config_runs(tmp_path):
    out = tmp_path / "demo"
    code = cli_main(["--config", str(ROOT / "examples" / "demo_sort.yaml"), "--set", "max_steps=3",
                     "--set", f"output_dir={out}", "--set", "prompts_per_step=4", "--set", "padding_free=true",
                     "--set", "plot=false"])
    assert code == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(math.isfinite(r["reward_mean"]) and math.isfinite(r["loss"]) for r in records)


def test_unsupported_attention_is_refused(tmp_path):
    model = tiny_model()
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match=r"padding_free=True needs .* uses attn_implementation='flash_attention_2'"):
        make_trainer(tmp_path, model=model, padding_free=True)
    make_trainer(tmp_path / "padded", model=model, padding_free=False)  # padded rows are fine


def test_unsupported_reference_attention_is_refused(tmp_path):
    ref = tiny_model()
    ref.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match=r"the reference model \(LlamaForCausalLM\) uses "
                                         r"attn_implementation='flex_attention'"):
        make_trainer(tmp_path, ref=frozen_copy(ref), beta=0.1, padding_free=True)


def test_sliding_window_layers_are_refused(tmp_path):
    model = tiny_model()
    model.config.layer_types = ["sliding_attention", "full_attention"]
    with pytest.raises(ValueError, match=r"padding_free=True is not supported .*'eager'.*sliding_attention"):
        make_trainer(tmp_path, model=model, padding_free=True)


def test_model_loss_packed_mode_contract():
    module = gro_kernels.GROModelLoss(tiny_model())
    ids, attention, keep, P = ragged_rows()
    p = packing.pack(ids, attention, keep, P)
    call = dict(targets=p.targets, targets_index=p.index, position_ids=p.position_ids, cu_seqlens=p.cu_seqlens,
                advantages=torch.ones(4))
    assert torch.isfinite(module(p.input_ids, **call).loss)
    with pytest.raises(ValueError, match="attention_mask=None"):
        module(p.input_ids, torch.ones_like(p.input_ids), **call)
    with pytest.raises(ValueError, match=r"input_ids \[1, L\]"):
        module(ids, **call)
    with pytest.raises(ValueError, match="needs cu_seqlens"):
        module(p.input_ids, **{**call, "cu_seqlens": None})
