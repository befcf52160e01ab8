"""Every GROConfig field does something: each is type-checked, and each is shown to change the run (or be
refused) when set. A field added without a probe here fails `test_every_field_has_a_probe`."""

import dataclasses
import io
import json
import sys
import typing

import pytest
import torch

from gro_kernels.trainer import GROConfig, cli

from tests.support.trainer_support import OFFLINE_PAIRS, frozen_copy, make_trainer, tiny_model, tokenizer

TIMING = ("step_time_s", "tokens_per_s", "peak_mem_mb")
FIELDS = [f.name for f in dataclasses.fields(GROConfig)]


def spread_reward(prompt, completion, **_):
    """Rewards that differ within a group, so every group has something to learn and pairs form."""
    return len(completion) + 0.1 * (sum(map(ord, completion)) % 7)


class AtTmp:
    """A probe value that needs a file: built from the test's tmp_path."""

    def __init__(self, make):
        self.make = make


def _resolve(tmp_path, changes):
    tmp_path.mkdir(parents=True, exist_ok=True)
    return {k: (v.make(tmp_path) if isinstance(v, AtTmp) else v) for k, v in changes.items()}


def _digest(model) -> bytes:
    return b"".join(p.detach().float().numpy().tobytes() for p in model.parameters())


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


class _Tty(io.StringIO):
    def isatty(self):
        return True


def run_fingerprint(tmp_path, changes: dict, monkeypatch):
    """What a short Python-API run produced: parameters, records, files, loss calls, optimizer updates."""
    opts = _resolve(tmp_path, changes)
    extras = {k: opts.pop(k) for k in list(opts) if k.startswith("_")}
    if extras.get("_prerun"):
        make_trainer(tmp_path, max_steps=1).train()
    err = _Tty()
    if extras.get("_tty"):
        monkeypatch.setattr(sys, "stderr", err)
    model = tiny_model(seed=4)
    ref = frozen_copy(model) if extras.get("_ref") else None
    if "_raises" in extras:
        with pytest.raises((ValueError, TypeError), match=extras["_raises"]):
            make_trainer(tmp_path, model=model, ref=ref, reward=spread_reward, offline=extras.get("_offline"),
                         **opts).train()
        return ("raised", extras["_raises"])
    tr = make_trainer(tmp_path, model=model, ref=ref, reward=spread_reward, offline=extras.get("_offline"), **opts)
    calls = []  # the input_ids shape of each loss forward: padded [B, P + C] rows or one packed [1, L] row
    tr.loss_module.register_forward_pre_hook(lambda module, args: calls.append(tuple(args[0].shape)))
    records = [{k: v for k, v in r.items() if k not in TIMING} for r in tr.train()]
    monkeypatch.undo()
    updates = max((int(s["step"]) for s in tr.optimizer.state.values()), default=0)
    return dict(params=_digest(tr.model), ref=_digest(tr.ref_model) if tr.ref_model is not None else None,
                records=records, files=_files(tmp_path), loss_calls=calls, updates=updates,
                loss_options=repr(tr.loss_module.options), loss_config=tr.loss_module.config,
                stderr=bool(err.getvalue()))


TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=32)
CLI_BASE = dict(tiny_model=TINY, task_options={"num_prompts": 16, "length": 3}, prompts_per_step=3, num_generations=4,
                max_new_tokens=5, max_prompt_length=8, micro_batch_size=64, max_steps=1, plot=False,
                progress_bar=False, save_steps=0)


def _saved_model(tmp_path):
    path = tmp_path / "hf-model"
    tiny_model(seed=11, **{k: v for k, v in TINY.items()}).save_pretrained(path)
    tokenizer().save_pretrained(path)
    return str(path)


def _pairs_file(n):
    def make(tmp_path):
        path = tmp_path / f"pairs{n}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in OFFLINE_PAIRS[:n]))
        return str(path)
    return AtTmp(make)


def cli_fingerprint(tmp_path, changes: dict, monkeypatch):
    """What the CLI built from the config: model, prompts, rewards, offline data, threads, device, dtype."""
    opts = _resolve(tmp_path, changes)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.append(("threads", n)))
    seen = []
    tr = cli.build_trainer(GROConfig(**{**CLI_BASE, "output_dir": str(tmp_path / "run"), **opts}))
    p = next(tr.model.parameters())
    params = _digest(tr.model) if p.device.type == "cpu" else None
    return dict(seen=seen, params=params, where=(str(p.device), str(p.dtype)), model=tr.model.config.to_dict(),
                records=tr.records, rewards=[getattr(f, "__name__", "") for f in tr.reward_fns], offline=tr.offline)


ONLINE_2 = dict(num_iterations=2)     # a second epoch: the policy ratio leaves 1, so the clip range matters
REJECT = dict(mode="rejection_sampling")
DPO = dict(mode="iterative_dpo", preset="dpo", beta=0.3, prompts_per_step=4)
HYBRID = dict(mode="hybrid", preset="grpo", offline_preset="dpo", _ref=True, _offline=OFFLINE_PAIRS)
SAVES = dict(save_steps=1, max_steps=3, save_total_limit=5)

# field -> (base changes, changed changes); "_" keys steer the harness (see run_fingerprint).
RUN_PROBES = {
    "reward_weights": ({}, dict(reward_weights=[2.0])),
    "mode": ({}, dict(mode="rejection_sampling")),
    "preset": ({}, dict(preset="dapo")),
    "num_generations": ({}, dict(num_generations=2)),
    "prompts_per_step": ({}, dict(prompts_per_step=2)),
    "num_iterations": ({}, dict(num_iterations=2)),
    "micro_batch_size": ({}, dict(micro_batch_size=4)),
    "mini_batch_size": ({}, dict(mini_batch_size=4)),
    "beta": (dict(_ref=True), dict(_ref=True, beta=0.5)),
    "epsilon": (ONLINE_2, dict(ONLINE_2, epsilon=1e-4)),
    "epsilon_high": (ONLINE_2, dict(ONLINE_2, epsilon_high=1e-4)),
    "loss_options": ({}, dict(loss_options={"entropy_coef": 0.5})),
    "rejection_keep": (REJECT, dict(REJECT, rejection_keep=3)),
    "rejection_min_reward": (REJECT, dict(REJECT, rejection_min_reward=100.0)),
    "ref_refresh_steps": (DPO, dict(DPO, ref_refresh_steps=2)),
    "offline_per_step": (HYBRID, dict(HYBRID, offline_per_step=1)),
    "offline_preset": (HYBRID, dict(HYBRID, offline_preset="ipo")),
    "offline_weight": (HYBRID, dict(HYBRID, offline_weight=0.25)),
    "temperature": ({}, dict(temperature=0.5)),
    "top_p": ({}, dict(top_p=0.5)),
    "max_new_tokens": ({}, dict(max_new_tokens=3)),
    "max_prompt_length": ({}, dict(max_prompt_length=3)),
    "truncate_prompts": (dict(max_prompt_length=3), dict(max_prompt_length=3, truncate_prompts=False,
                                                         _raises="max_prompt_length=3")),
    "max_steps": ({}, dict(max_steps=1)),
    "learning_rate": ({}, dict(learning_rate=1e-2)),
    "weight_decay": ({}, dict(weight_decay=0.5)),
    "adam_betas": ({}, dict(adam_betas=(0.5, 0.9))),
    "adam_eps": ({}, dict(adam_eps=0.1)),
    "max_grad_norm": ({}, dict(max_grad_norm=1e-4)),
    "lr_scheduler": ({}, dict(lr_scheduler="linear")),
    "warmup_steps": ({}, dict(warmup_steps=2)),
    "loss_impl": ({}, dict(loss_impl="materialized")),
    "padding_free": ({}, dict(padding_free=True)),  # same math (test_padding_free.py); one packed row per call
    "seed": ({}, dict(seed=1)),
    "output_dir": ({}, dict(output_dir=AtTmp(lambda t: str(t / "elsewhere")))),
    "metrics_file": ({}, dict(metrics_file="other.jsonl")),
    "plot": ({}, dict(plot=True)),
    "progress_bar": (dict(_tty=True), dict(_tty=True, progress_bar=True)),
    "save_steps": (SAVES, dict(SAVES, save_steps=2)),
    "save_total_limit": (SAVES, dict(SAVES, save_total_limit=1)),
    "resume": (dict(_prerun=True, overwrite_output_dir=True), dict(_prerun=True, resume=True)),
    "overwrite_output_dir": (dict(_prerun=True, _raises="is not empty"), dict(_prerun=True,
                                                                               overwrite_output_dir=True)),
}

# Fields only the CLI reads (the Python API takes the model, prompts and rewards as objects).
CLI_PROBES = {
    "model": ({}, dict(model=AtTmp(_saved_model))),
    "tiny_model": ({}, dict(tiny_model=dict(TINY, intermediate_size=48))),
    "task": ({}, dict(task="echo_digits")),
    "task_options": ({}, dict(task_options={"num_prompts": 8, "length": 3})),
    "rewards": ({}, dict(rewards=[f"{__name__}:spread_reward"])),
    "offline_file": (dict(mode="hybrid", offline_file=_pairs_file(3)),
                     dict(mode="hybrid", offline_file=_pairs_file(2))),
    "device": ({}, dict(device="meta")),
    "num_threads": ({}, dict(num_threads=1)),
    "dtype": ({}, dict(dtype="bfloat16")),
}


def test_every_field_has_a_probe():
    assert sorted(RUN_PROBES.keys() | CLI_PROBES.keys()) == sorted(FIELDS)


BASELINES = {}  # most probes share a base run: computed once per module


def baseline(fingerprint, tmp_path, base, monkeypatch):
    key = (fingerprint.__name__, repr(sorted(base.items())))
    if key not in BASELINES:
        BASELINES[key] = fingerprint(tmp_path, base, monkeypatch)
    return BASELINES[key]


@pytest.mark.filterwarnings("ignore:prompt .* tokens > max_prompt_length")
@pytest.mark.parametrize("name", list(RUN_PROBES))
def test_field_changes_the_run(tmp_path, monkeypatch, name):
    base, changed = RUN_PROBES[name]
    a = baseline(run_fingerprint, tmp_path / "a", base, monkeypatch)
    b = run_fingerprint(tmp_path / "b", changed, monkeypatch)
    assert a != b, f"{name}={changed} changed nothing"


@pytest.mark.parametrize("name", list(CLI_PROBES))
def test_cli_field_changes_what_is_built(tmp_path, monkeypatch, name):
    base, changed = CLI_PROBES[name]
    a = baseline(cli_fingerprint, tmp_path / "a", base, monkeypatch)
    b = cli_fingerprint(tmp_path / "b", changed, monkeypatch)
    assert a != b, f"{name}={changed} changed nothing"


def _wrong_type_value(name):
    hint = typing.get_type_hints(GROConfig)[name]
    return 3 if hint in (str, dict, list, tuple, bool) or str in typing.get_args(hint) else "3"


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_is_type_checked(name):
    """A value of the wrong type is a TypeError naming the field, what it expects and what it got."""
    with pytest.raises(TypeError, match=rf"^{name} must be .*, got .*\((int|str)\)"):
        GROConfig(**{name: _wrong_type_value(name)})


# ----- the clip range (epsilon, epsilon_high) -------------------------------------------------------

@pytest.mark.parametrize("preset, changes, low, high", [
    ("grpo", dict(), 0.2, 0.2),
    ("grpo", dict(epsilon=1e-4), 1e-4, 1e-4),                 # symmetric preset: epsilon sets both sides
    ("grpo", dict(epsilon=0.1, epsilon_high=0.3), 0.1, 0.3),
    ("dapo", dict(epsilon=0.1), 0.1, 0.28),                   # dapo keeps its upper clip (as gro_loss does)
    ("dapo", dict(epsilon_high=0.5), 0.2, 0.5),
    ("gspo", dict(), 3e-4, 4e-4),                             # unset: the preset's own (tiny) range
], ids=["grpo-default", "grpo-eps", "grpo-both", "dapo-eps", "dapo-high", "gspo-default"])
def test_clip_range_reaches_the_loss(tmp_path, preset, changes, low, high):
    tr = make_trainer(tmp_path, preset=preset, **changes)
    assert (tr.preset.epsilon_low, tr.preset.epsilon_high) == (low, high)
    assert tr.loss_module.config is tr.preset


def test_epsilon_changes_training(tmp_path):
    runs = {}
    for eps in (None, 1e-4):
        tr = make_trainer(tmp_path / str(eps), model=tiny_model(seed=4), reward=spread_reward, num_iterations=2,
                          epsilon=eps)
        record = tr.train_step()
        runs[eps] = (record, _digest(tr.model))
    assert runs[1e-4][0]["clip_ratio"] > runs[None][0]["clip_ratio"]
    assert runs[1e-4][1] != runs[None][1]


@pytest.mark.parametrize("changes, error, match", [
    (dict(epsilon_high=-1.0), ValueError, r"epsilon_high must be a finite number >= 0, got -1\.0"),
    (dict(epsilon=float("nan")), ValueError, r"epsilon must be a finite number >= 0, got nan"),
    (dict(epsilon="0.2"), TypeError, r"epsilon must be a number or None, got '0.2' \(str\)"),
    (dict(mode="iterative_dpo", preset="dpo", epsilon=0.1), ValueError,
     r"epsilon=0\.1 is not used by mode 'iterative_dpo'"),
])
def test_clip_range_validated(changes, error, match):
    with pytest.raises(error, match=match):
        GROConfig(**changes)


def test_clip_range_given_twice_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"epsilon_high is set twice: epsilon_high=0\.3 and loss_options"):
        make_trainer(tmp_path, epsilon_high=0.3, loss_options={"epsilon_high": 0.4})


@pytest.mark.parametrize("changes, match", [
    (dict(rejection_keep=2), r"rejection_keep=2 is not used by mode 'online' \(only by 'rejection_sampling'\)"),
    (dict(ref_refresh_steps=3), r"ref_refresh_steps=3 is not used by mode 'online'"),
    (dict(offline_per_step=2), r"offline_per_step=2 is not used by mode 'online' \(only by 'hybrid'\)"),
    (dict(offline_weight=0.5), r"offline_weight=0\.5 is not used by mode 'online' \(only by 'hybrid'\)"),
])
def test_mode_only_fields_refused_elsewhere(changes, match):
    with pytest.raises(ValueError, match=match):
        GROConfig(**changes)
