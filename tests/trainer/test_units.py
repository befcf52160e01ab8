"""Trainer pieces that need no training step: config, CLI parsing, prompts, completion masks, rewards,
checkpoints, reference checks and the import rule."""

import ast
import json
import os
from pathlib import Path

import pytest
import torch

from gro_kernels.trainer import GROConfig, RewardError, checkpoint, cli, load_config, rewards, rollout
from gro_kernels.trainer.cli import parse_overrides

from tests.support.trainer_support import OFFLINE_PAIRS, make_trainer, prompts, tiny_model, tokenizer


# ----- config -------------------------------------------------------------------------------------

def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match=r"unknown GRO config key 'learning_rat'.*learning_rate"):
        GROConfig.from_dict({"learning_rat": 1e-3})


@pytest.mark.parametrize("changes, match", [
    ({"mode": "offline"}, "mode must be one of"),
    ({"mode": "iterative_dpo", "preset": "grpo"}, "preset must be one of .*'iterative_dpo'"),
    ({"preset": "dpo"}, "preset must be one of"),
    ({"num_generations": 1}, "num_generations must be >= 2"),
    ({"top_p": 0.0}, "top_p"),
    ({"learning_rate": -1.0}, "learning_rate"),
    ({"micro_batch_size": 0}, "micro_batch_size"),
    ({"rejection_keep": 9, "mode": "rejection_sampling"}, "rejection_keep"),
    ({"adam_betas": [0.9]}, "adam_betas"),
], ids=["mode", "dpo-preset-for-online", "online-preset", "G1", "top_p", "lr", "micro", "keep", "betas"])
def test_bad_config_values(changes, match):
    with pytest.raises(ValueError, match=match):
        GROConfig(**changes)


@pytest.mark.parametrize("make, error, match", [
    (lambda: GROConfig.from_dict({"group_size": "4"}), ValueError,
     r"unknown GRO config key 'group_size' \(did you mean 'num_generations'\?\)"),
    (lambda: GROConfig(group_size=4), ValueError, r"unknown GRO config key 'group_size' \(did you mean"),
    (lambda: GROConfig(num_generations="4"), TypeError, r"num_generations must be an int, got '4' \(str\); YAML"),
    (lambda: GROConfig(adam_betas=0.9), TypeError, r"adam_betas must be a pair of numbers \[beta1, beta2\], got 0\.9 "
                                                   r"\(float\)"),
    (lambda: GROConfig(adam_betas=["0.9", 0.99]), TypeError, r"adam_betas\[0\] must be a number, got '0\.9' \(str\)"),
    (lambda: GROConfig(learning_rate="1e-5"), TypeError,
     r"learning_rate must be a number, got '1e-5' \(str\).*1\.0e-5"),
    (lambda: GROConfig(plot="false"), TypeError, r"plot must be a bool \(true/false\), got 'false' \(str\)"),
    (lambda: GROConfig(rewards="m:f"), TypeError, r"rewards must be a list, got 'm:f' \(str\)"),
    (lambda: GROConfig(task="sort_digit"), ValueError,
     r"task must be a built-in task \['echo_digits', 'sort_digits'\] or a \.json/\.jsonl prompts file, got "
     r"'sort_digit' \(did you mean 'sort_digits'\?\)"),
    (lambda: GROConfig(task="p.jsonl", task_options={"length": 3}), ValueError,
     r"task_options \{'length': 3\} apply to the built-in tasks only, not to the prompts file 'p\.jsonl'"),
    (lambda: GROConfig(device="gpu"), ValueError,
     r"device must be a torch device such as 'cpu' or 'cuda:0', got 'gpu'"),
], ids=["group_size-key", "group_size-kwarg", "G-str", "betas-float", "betas-str", "yaml-1e-5", "bool-str",
        "rewards-str", "task-name", "task-options-file", "device"])
def test_config_messages_name_field_expected_and_actual(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_yaml_quoted_number_is_named(tmp_path):
    (tmp_path / "a.yaml").write_text('num_generations: "4"\nlearning_rate: 1e-5\n')
    with pytest.raises(TypeError, match=r"num_generations must be an int, got '4' \(str\)"):
        load_config(tmp_path / "a.yaml")


def test_load_yaml_json_and_overrides(tmp_path):
    (tmp_path / "a.yaml").write_text("preset: dapo\nmax_steps: 7\n")
    (tmp_path / "b.json").write_text(json.dumps({"preset": "rloo", "beta": 0.02}))
    assert load_config(tmp_path / "a.yaml").preset == "dapo"
    assert load_config(tmp_path / "a.yaml", {"max_steps": 3}).max_steps == 3
    assert load_config(tmp_path / "b.json").beta == 0.02
    (tmp_path / "c.yaml").write_text("presett: dapo\n")
    with pytest.raises(ValueError, match="unknown GRO config key 'presett'"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.txt").write_text("{}")
    with pytest.raises(ValueError, match=r"\.yaml, \.yml or \.json"):
        load_config(tmp_path / "d.txt")


def test_cli_overrides():
    assert parse_overrides(["max_steps=3", "beta=0.1", "loss_options={epsilon_high: 0.3}"]) == \
        {"max_steps": 3, "beta": 0.1, "loss_options": {"epsilon_high": 0.3}}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["max_steps"])


def test_console_script_declared():
    text = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert 'gro-train = "gro_kernels.trainer.cli:main"' in text


# ----- prompts and completions ----------------------------------------------------------------------

def test_long_prompt_truncated_with_warning_or_rejected():
    tok = tokenizer()
    with pytest.warns(UserWarning, match="prompt 1 has 11 tokens > max_prompt_length=4"):
        ids = rollout.encode_prompts(tok, ["1>", "0123456789"], 4, truncate=True)
    assert ids[1] == tok.encode("0123456789")[-4:]
    with pytest.raises(ValueError, match="prompt 1 has 11 tokens > max_prompt_length=4"):
        rollout.encode_prompts(tok, ["1>", "0123456789"], 4, truncate=False)


def test_completion_mask_cuts_after_first_eos():
    tok = tokenizer()
    eos, pad = tok.eos_token_id, tok.pad_token_id
    d = {c: tok.convert_tokens_to_ids(c) for c in "123"}
    prompt = torch.tensor([[tok.bos_token_id, d["1"]]] * 3)
    comp = torch.tensor([[eos, d["2"], d["3"]],       # empty completion: EOS at once
                         [d["2"], eos, d["1"]],       # text after EOS is dropped
                         [d["1"], d["2"], d["3"]]])   # no EOS: all tokens count
    r = rollout.assemble(tok, prompt, torch.ones_like(prompt), comp, [0, 1, 2])
    assert r.completions == ["", "2", "123"]
    assert r.completion_mask.tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert r.completion_ids.tolist()[0] == [eos, pad, pad]
    assert r.attention_mask[:, 2:].tolist() == r.completion_mask.long().tolist()


def test_sampling_knobs_are_explicit():
    """Unset fields would be filled from the checkpoint's generation config (or top_k=50): the sampled
    distribution must stay softmax(z / T) so the trainer's logprobs describe it."""
    model = tiny_model()
    model.generation_config.top_k = 3
    model.generation_config.repetition_penalty = 1.3
    seen = {}
    real = model.generate

    def spy(**kwargs):
        seen.update(kwargs["generation_config"].to_dict())
        return real(**kwargs)

    model.generate = spy
    r = rollout.sample(model, tokenizer(), [tokenizer().encode("12>")], 2, temperature=0.7, top_p=1.0,
                       max_new_tokens=3)
    assert seen["top_k"] == 0 and seen["repetition_penalty"] == 1.0 and seen["temperature"] == 0.7
    assert r.input_ids.shape[0] == 2 and r.prompt_index == [0, 0]


def test_not_a_causal_lm_rejected(tmp_path):
    with pytest.raises(TypeError, match="Hugging Face causal LM"):
        make_trainer(tmp_path, model=torch.nn.Linear(2, 2))


# ----- rewards ----------------------------------------------------------------------------------

def _boom(prompt, completion, **_):
    if prompt.startswith("5"):
        raise KeyError("no answer")
    return 1.0


@pytest.mark.parametrize("fn, match", [
    (_boom, r"reward function '_boom' raised KeyError.*prompt index 12"),
    (lambda p, c, **_: float("nan"), r"'<lambda>' returned nan \(non-finite reward\) on prompt index 10"),
    (lambda p, c, **_: "good", r"returned 'good' \(not a number\)"),
], ids=["raises", "nan", "not-a-number"])
def test_reward_errors_name_function_and_prompt(fn, match):
    records = [{"prompt": "12>"}, {"prompt": "51>"}]
    with pytest.raises(RewardError, match=match):
        rewards.score([fn], [1.0], records, ["x", "y", "z"], [0, 0, 1], dataset_index=[10, 12])


@pytest.mark.parametrize("spec, match", [
    ("no_such_module_xyz:score", r"reward_fns\[0\] 'no_such_module_xyz:score': cannot import module "
                                 r"'no_such_module_xyz' \(ModuleNotFoundError: No module named 'no_such_module_xyz'\)"),
    ("json:no_such_fn", r"reward_fns\[0\] 'json:no_such_fn': module 'json' has no callable 'no_such_fn'"),
    ("sort_digit", r"reward_fns\[0\] 'sort_digit' must be a built-in task name \['echo_digits', 'sort_digits'\] or "
                   r"'package.module:function'"),
], ids=["no-module", "no-function", "no-task"])
def test_reward_specs_name_the_argument(tmp_path, spec, match):
    with pytest.raises(ValueError, match=match):
        make_trainer(tmp_path, reward=spec)


def test_cli_names_the_config_field(tmp_path):
    base = dict(tiny_model=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=32),
                max_prompt_length=8, max_new_tokens=4, output_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"rewards\[1\] 'no_such_module_xyz:f': cannot import module"):
        cli.build_trainer(GROConfig(rewards=["sort_digits", "no_such_module_xyz:f"], **base))
    with pytest.raises(ValueError, match=r"task 'missing\.jsonl': no such prompts file"):
        cli.build_trainer(GROConfig(task="missing.jsonl", rewards=["sort_digits"], **base))
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "12>", "target": "12"}) + "\n")
    with pytest.raises(ValueError, match=r"rewards is empty and task '.*p\.jsonl' is a prompts file, which brings no "
                                         r"reward; set rewards: \['package\.module:function'\]"):
        cli.build_trainer(GROConfig(task=str(tmp_path / "p.jsonl"), **base))
    with pytest.raises(ValueError, match=r"task_options has unknown key 'num_prompt' \(did you mean 'num_prompts'\?\)"):
        cli.build_trainer(GROConfig(task_options={"num_prompt": 3}, **base))


def test_rewards_weighted_sum_and_specs():
    fns = [rewards.resolve("sort_digits"), rewards.resolve(lambda p, c, **_: len(c))]
    out = rewards.score(fns, [2.0, 0.5], [{"prompt": "21>", "target": "12"}], ["12", "1"], [0, 0])
    assert out.tolist() == [2.0 + 1.0, 2.0 * 0.5 + 0.5]
    with pytest.raises(ValueError, match="module:function"):
        rewards.resolve("nonsense")
    with pytest.raises(ValueError, match="one weight per reward function"):
        rewards.check_weights(fns, [1.0])


# ----- references and models ---------------------------------------------------------------------------

@pytest.mark.parametrize("changes", [dict(preset="grpo", beta=0.04), dict(mode="hybrid", offline_preset="dpo")],
                         ids=["grpo-kl", "hybrid-dpo"])
def test_reference_required_at_start(tmp_path, changes):
    offline = OFFLINE_PAIRS if changes.get("mode") == "hybrid" else None
    with pytest.raises(ValueError, match="needs a reference model"):
        make_trainer(tmp_path, offline=offline, **changes)


def test_context_too_short_rejected_at_start(tmp_path):
    with pytest.raises(ValueError, match="exceeds the model context"):
        make_trainer(tmp_path, max_prompt_length=30, max_new_tokens=8)


def test_logit_softcapping_rejected(tmp_path):
    model = tiny_model()
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(NotImplementedError, match="final_logit_softcapping"):
        make_trainer(tmp_path, model=model)


def test_unknown_loss_option_is_named(tmp_path):
    with pytest.raises(ValueError, match="loss_options has unknown key 'entropy_coef:0.01'"):
        make_trainer(tmp_path, loss_options={"entropy_coef:0.01": None})


def test_hybrid_offline_records_checked(tmp_path):
    bad = [{"prompt": "1>", "chosen": "1"}]
    with pytest.raises(ValueError, match=r"offline_data\[0\] lacks \['rejected'\]"):
        make_trainer(tmp_path, mode="hybrid", offline=bad, ref=tiny_model())


# ----- checkpoints ------------------------------------------------------------------------------------

def _save(root, step, model, opt, sched, keep=2):
    return checkpoint.save_checkpoint(root, step, policy=model, optimizer=opt, scheduler=sched, config={"s": step},
                                      trainer_state={}, keep_last=keep)


def test_checkpoint_atomic_keep_last_and_crash(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for step in (1, 2, 3):
        _save(tmp_path, step, model, opt, sched)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    real_save = torch.save

    def crash(obj, path, *a, **k):
        if str(path).endswith("optim.pt"):
            raise OSError("disk full")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 4, model, opt, sched)
    monkeypatch.undo()
    # the half-written step 4 never appears; step 3 is complete and loads
    assert checkpoint.latest_checkpoint(tmp_path).name == "step-00000003"
    saved = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    state = checkpoint.load_checkpoint(checkpoint.latest_checkpoint(tmp_path), policy=model, optimizer=opt,
                                       scheduler=sched)
    assert state["step"] == 3 and torch.equal(model.weight.detach(), saved)
    assert not any(p.name.startswith(".tmp") for p in checkpoint.list_checkpoints(tmp_path))


# ----- layering ----------------------------------------------------------------------------------------

def test_trainer_imports_only_the_public_api():
    root = Path(__file__).parents[2] / "gro_kernels" / "trainer"
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")] + [a.name for a in node.names if node.level > 1]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                assert not name.startswith("gro_kernels.") or name.startswith("gro_kernels.trainer"), (path.name, name)
                assert not name.startswith(".."), (path.name, name)


def test_prompts_must_be_text(tmp_path):
    with pytest.raises(TypeError, match=r"train_prompts\[1\]"):
        make_trainer(tmp_path, records=[{"prompt": "1>"}, {"text": "2>"}])
    assert len(prompts()) == 16 and os.path.isdir(tmp_path)
