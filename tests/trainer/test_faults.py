"""Interrupted and damaged runs: a kill at each point of a checkpoint save, and each kind of damage to a saved
checkpoint, must end in a resumed run equal to an uninterrupted one (or in an error naming what is broken).

Kills are simulated by raising Killed (a BaseException, so no `except Exception` clean-up runs, as with
SIGKILL) at one point of the save; damage by flipping, truncating, editing or deleting files."""

import json
import logging
import os
import shutil

import pytest
import torch

from gro_kernels.trainer import checkpoint as ckpt

from tests.support.trainer_support import frozen_copy, make_trainer, tiny_model

COMMON = dict(max_steps=4, save_steps=1, save_total_limit=4, num_iterations=2, lr_scheduler="cosine", warmup_steps=1)


class Killed(BaseException):
    """The process died here."""


def spread_reward(prompt, completion, **_):
    return len(completion) + 0.1 * (sum(map(ord, completion)) % 7)


@pytest.fixture(scope="module")
def init():
    return tiny_model(seed=3)


def trainer(path, init, **changes):
    return make_trainer(path, model=frozen_copy(init).requires_grad_(True), reward=spread_reward,
                        **{**COMMON, **changes})


def params(tr):
    return [p.detach().clone() for p in tr.model.parameters()]


@pytest.fixture(scope="module")
def straight(init, tmp_path_factory):
    """The uninterrupted run every recovered run must equal, bit for bit."""
    tr = trainer(tmp_path_factory.mktemp("straight"), init)
    tr.train()
    return params(tr)


def assert_same(tr, expected):
    for a, b in zip(params(tr), expected):
        assert torch.equal(a, b)


def steps_dir(tmp_path):
    return tmp_path / "run"


def ckpt_dir(tmp_path, step):
    return ckpt.checkpoint_root(steps_dir(tmp_path)) / f"step-{step:08d}"


def resume_and_finish(tmp_path, init, straight, from_step, **changes):
    tr = trainer(tmp_path, init, resume=True, **changes)
    assert tr.step == from_step
    assert not list(ckpt.checkpoint_root(steps_dir(tmp_path)).glob(".tmp-*")), "leftovers removed on resume"
    tr.train()
    assert_same(tr, straight)
    return tr


# ----- kill points inside save_checkpoint (at the save of step 2) ----------------------------------------

def _kill_torch_save(name):
    def patch(monkeypatch):
        real = torch.save

        def save(obj, path, *a, **k):
            if str(path).endswith(name) and ".tmp-step-00000002" in str(path):
                raise Killed(f"while writing {name}")
            return real(obj, path, *a, **k)
        monkeypatch.setattr(torch, "save", save)
    return patch


def _kill_call(attr, when):
    def patch(monkeypatch):
        real = getattr(ckpt, attr) if hasattr(ckpt, attr) else getattr(os, attr)
        target = ckpt if hasattr(ckpt, attr) else os

        def wrapped(*args, **kwargs):
            if when(*args):
                raise Killed(attr)
            return real(*args, **kwargs)
        monkeypatch.setattr(target, attr, wrapped)
    return patch


def _is_step2(path, *_):
    return "step-00000002" in str(path)


KILL_POINTS = {  # name -> (patch, newest intact step after the kill)
    "writing-policy": (_kill_torch_save("policy.pt"), 1),
    "writing-optim": (_kill_torch_save("optim.pt"), 1),
    "before-manifest": (_kill_call("_write_manifest", lambda tmp, step: step == 2), 1),
    "before-rename": (_kill_call("replace", lambda src, dst: ".tmp-step-00000002" in str(src)), 1),
    "before-prune": (_kill_call("_prune", lambda out, keep: ckpt.latest_checkpoint(out).name == "step-00000002"), 2),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_during_save_then_resume_equals_uninterrupted(tmp_path, init, straight, monkeypatch, caplog, point):
    patch, newest = KILL_POINTS[point]
    patch(monkeypatch)
    with pytest.raises(Killed):
        trainer(tmp_path, init).train()
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(steps_dir(tmp_path)).name == f"step-{newest:08d}"
    leftovers = list(ckpt.checkpoint_root(steps_dir(tmp_path)).glob(".tmp-*"))
    with caplog.at_level(logging.WARNING, logger="gro_kernels.trainer"):
        resume_and_finish(tmp_path, init, straight, newest)
    for left in leftovers:
        assert f"removed {left}" in caplog.text


def test_kill_between_the_renames_of_a_resave_keeps_the_old_copy(tmp_path, init, monkeypatch):
    """Re-saving a step moves the old copy aside; a kill before the new one lands restores the old one."""
    tr = trainer(tmp_path, init, max_steps=2, save_steps=0)
    tr.train()
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise Killed("between the renames")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        tr.save()
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(steps_dir(tmp_path)) is None  # step 2 is aside, the new copy in tmp
    restored = ckpt.clean_temporaries(steps_dir(tmp_path))
    assert len(restored) == 2 and ckpt.latest_checkpoint(steps_dir(tmp_path)).name == "step-00000002"
    ckpt.verify_checkpoint(ckpt_dir(tmp_path, 2))


def test_error_during_save_leaves_nothing_behind(tmp_path, init, monkeypatch):
    """An exception (disk full), unlike a kill, removes its own temporary directory at once."""
    tr = trainer(tmp_path, init, max_steps=1)
    tr.train_step()
    def disk_full(tmp, step):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write_manifest", disk_full)
    with pytest.raises(OSError, match="disk full"):
        tr.save()
    assert list(ckpt.checkpoint_root(steps_dir(tmp_path)).iterdir()) == []


def test_leftovers_are_removed_by_the_next_save(tmp_path, init):
    tr = trainer(tmp_path, init, max_steps=1)
    tr.train_step()
    stale = ckpt.checkpoint_root(steps_dir(tmp_path)) / ".tmp-step-00000007-999"
    stale.mkdir(parents=True)
    (stale / "policy.pt").write_bytes(b"half")
    tr.save()
    assert not stale.exists() and ckpt.latest_checkpoint(steps_dir(tmp_path)).name == "step-00000001"


def test_save_fsyncs_every_file_then_the_manifest_then_the_directories(tmp_path, init, monkeypatch):
    tr = trainer(tmp_path, init, max_steps=1)
    tr.train_step()
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(src)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    final = tr.save()
    monkeypatch.undo()
    rename = events.index(("rename", str(final.with_name(f".tmp-{final.name}-{os.getpid()}"))))
    synced = [os.path.basename(p) for kind, p in events[:rename] if kind == "fsync"]
    files = sorted(p.name for p in final.iterdir())
    assert sorted(synced[:len(files)]) == files and synced[len(files) - 1] == "manifest.json"
    assert synced[len(files)] == f".tmp-{final.name}-{os.getpid()}"       # the directory, before the rename
    assert ("fsync", str(final.parent)) in events[rename:]                 # its parent, after it
    manifest = json.loads((final / "manifest.json").read_text())
    assert sorted(manifest["files"]) == [f for f in files if f != "manifest.json"] and manifest["step"] == 1
    for name, entry in manifest["files"].items():
        assert entry["size"] == (final / name).stat().st_size and len(entry["sha256"]) == 64


# ----- damage to the newest checkpoint --------------------------------------------------------------------

def _flip_weight_bit(path):
    """Flip an exponent bit of one stored weight: -0.21 becomes about 1e38, and torch.load does not notice."""
    data = bytearray(path.read_bytes())
    weight = torch.load(path)["model.embed_tokens.weight"].flatten()
    at = data.find(weight.numpy().tobytes())
    k = int(weight.abs().argmax())  # row 0 (padding) is zeros: take a real weight
    assert at > 0 and weight[k] != 0
    data[at + 4 * k + 3] ^= 0x40   # little-endian fp32: byte 3 holds the sign and the top exponent bits
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {  # name -> (damage to the step-3 directory, words the warning must hold)
    "policy-bit-flip": (lambda d: _flip_weight_bit(d / "policy.pt"), r"policy\.pt has sha256"),
    "optim-truncated": (lambda d: _truncate(d / "optim.pt"), r"optim\.pt has \d+ bytes, the manifest says"),
    "state-invalid-json": (lambda d: (d / "trainer_state.json").write_text('{"step": 3,'), r"trainer_state\.json has"),
    "config-edited": (lambda d: (d / "config.json").write_text("{}"), r"config\.json has"),
    "policy-deleted": (lambda d: (d / "policy.pt").unlink(), r"policy\.pt is missing"),
    "manifest-deleted": (lambda d: (d / "manifest.json").unlink(), r"no manifest\.json"),
    "manifest-torn": (lambda d: _truncate(d / "manifest.json"), r"manifest\.json is not valid JSON"),
    "all-files-deleted": (lambda d: [p.unlink() for p in d.iterdir()], r"no manifest\.json"),
}


@pytest.fixture(scope="module")
def saved_run(init, tmp_path_factory):
    """A run killed after the save of step 3, with checkpoints 1, 2 and 3 (copied per test, then damaged)."""
    root = tmp_path_factory.mktemp("saved")
    tr = trainer(root, init)  # max_steps as the straight run: the LR schedule depends on it
    for _ in range(3):
        tr.train_step()
        tr.save()
    return root


def _copy_run(saved_run, tmp_path):
    shutil.copytree(saved_run / "run", tmp_path / "run")


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_intact_one(tmp_path, init, straight, saved_run, damage):
    _copy_run(saved_run, tmp_path)
    hurt, reason = DAMAGE[damage]
    hurt(ckpt_dir(tmp_path, 3))
    with pytest.raises(ckpt.CheckpointError, match=reason):
        ckpt.verify_checkpoint(ckpt_dir(tmp_path, 3))
    with pytest.warns(ckpt.CheckpointWarning, match=rf"skipping damaged checkpoint .*step-00000003: {reason}"):
        resume_and_finish(tmp_path, init, straight, 2)


def test_bit_flip_would_load_silently_without_the_manifest(tmp_path, init, saved_run):
    _copy_run(saved_run, tmp_path)
    _flip_weight_bit(ckpt_dir(tmp_path, 3) / "policy.pt")
    tr = trainer(tmp_path / "other", init)
    targets = dict(policy=tr.model, optimizer=tr.optimizer, scheduler=tr.scheduler)
    ckpt.load_checkpoint(ckpt_dir(tmp_path, 3), verify=False, **targets)  # what resume did before manifests
    assert tr.model.model.embed_tokens.weight.abs().max() > 1e30
    with pytest.raises(ckpt.CheckpointError, match=r"step-00000003: policy\.pt has sha256"):
        ckpt.load_checkpoint(ckpt_dir(tmp_path, 3), **targets)


def test_no_intact_checkpoint_is_an_error_naming_each(tmp_path, init, saved_run):
    _copy_run(saved_run, tmp_path)
    _truncate(ckpt_dir(tmp_path, 1) / "optim.pt")
    _flip_weight_bit(ckpt_dir(tmp_path, 2) / "policy.pt")
    (ckpt_dir(tmp_path, 3) / "manifest.json").unlink()
    with pytest.warns(ckpt.CheckpointWarning):
        with pytest.raises(ckpt.CheckpointError, match=r"no intact checkpoint to resume from; step-00000003: no "
                           r"manifest\.json.*; step-00000002: policy\.pt has sha256.*; step-00000001: optim\.pt has"):
            trainer(tmp_path, init, resume=True)


def test_resume_from_a_named_damaged_checkpoint_does_not_fall_back(tmp_path, init, saved_run):
    _copy_run(saved_run, tmp_path)
    _truncate(ckpt_dir(tmp_path, 2) / "policy.pt")
    tr = trainer(tmp_path / "other", init)
    with pytest.raises(ckpt.CheckpointError, match=r"step-00000002: policy\.pt has \d+ bytes"):
        tr.resume(ckpt_dir(tmp_path, 2))


def test_damaged_reference_of_iterative_dpo_is_caught(tmp_path, init):
    changes = dict(mode="iterative_dpo", preset="dpo", beta=0.3, prompts_per_step=4, ref_refresh_steps=3)
    trainer(tmp_path, init, max_steps=2, **changes).train()
    _flip_weight_bit(ckpt_dir(tmp_path, 2) / "reference.pt")
    with pytest.warns(ckpt.CheckpointWarning, match=r"step-00000002: reference\.pt has sha256"):
        tr = trainer(tmp_path, init, resume=True, **changes)
    assert tr.step == 1


# ----- a fresh run into a used output_dir ------------------------------------------------------------------

def _metric_steps(run_dir, name="metrics.jsonl"):
    return [json.loads(line)["step"] for line in (run_dir / name).read_text().splitlines() if line.strip()]


def test_fresh_run_refuses_a_used_output_dir(tmp_path, init):
    trainer(tmp_path, init, max_steps=3).train()
    before = sorted(p.name for p in ckpt.list_checkpoints(steps_dir(tmp_path)))
    with pytest.raises(ValueError, match=r"output_dir '.*run' is not empty .*resume=True \(--resume\).*"
                                         r"overwrite_output_dir=True \(--set overwrite_output_dir=true\)"):
        trainer(tmp_path, init, max_steps=2)
    assert sorted(p.name for p in ckpt.list_checkpoints(steps_dir(tmp_path))) == before
    assert _metric_steps(steps_dir(tmp_path)) == [1, 2, 3]


def test_overwrite_output_dir_clears_the_old_run_first(tmp_path, init):
    trainer(tmp_path, init, max_steps=3, plot=True).train()
    (steps_dir(tmp_path) / "notes.txt").write_text("mine")
    trainer(tmp_path, init, max_steps=2, overwrite_output_dir=True).train()
    assert [p.name for p in ckpt.list_checkpoints(steps_dir(tmp_path))] == ["step-00000001", "step-00000002"]
    assert _metric_steps(steps_dir(tmp_path)) == [1, 2]
    assert not (steps_dir(tmp_path) / "curves.png").exists()          # plot=False this time: the old one is gone
    assert (steps_dir(tmp_path) / "notes.txt").read_text() == "mine"   # only the trainer's own files are removed


def test_an_empty_output_dir_is_fine_and_resume_with_overwrite_is_refused(tmp_path, init):
    steps_dir(tmp_path).mkdir()
    trainer(tmp_path, init, max_steps=1).train()
    with pytest.raises(ValueError, match=r"resume=True and overwrite_output_dir=True contradict each other"):
        trainer(tmp_path, init, resume=True, overwrite_output_dir=True)


def _cli_config(tmp_path, **changes):
    config = tmp_path / "run.yaml"  # JSON is YAML
    tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=32)
    base = dict(tiny_model=tiny, task_options={"num_prompts": 8, "length": 3}, prompts_per_step=2, max_new_tokens=4,
                max_prompt_length=8, max_steps=2, save_steps=0, plot=False, progress_bar=False,
                output_dir=str(tmp_path / "out"))
    config.write_text(json.dumps({**base, **changes}))
    return config


def test_cli_resume_falls_back_past_a_damaged_checkpoint(tmp_path):
    from gro_kernels.trainer.cli import main

    config = _cli_config(tmp_path, save_steps=1)
    assert main(["--config", str(config)]) == 0
    _flip_weight_bit(ckpt.checkpoint_root(tmp_path / "out") / "step-00000002" / "policy.pt")
    with pytest.warns(ckpt.CheckpointWarning, match=r"step-00000002: policy\.pt has sha256"):
        assert main(["--config", str(config), "--resume", "--set", "max_steps=3"]) == 0
    assert _metric_steps(tmp_path / "out") == [1, 2, 2, 3]
    ckpt.verify_checkpoint(ckpt.checkpoint_root(tmp_path / "out") / "step-00000002")  # rewritten, intact


def test_cli_refuses_then_overwrites(tmp_path):
    from gro_kernels.trainer.cli import main

    config = _cli_config(tmp_path)
    assert main(["--config", str(config)]) == 0
    with pytest.raises(ValueError, match="is not empty"):
        main(["--config", str(config), "--set", "max_steps=1"])
    assert main(["--config", str(config), "--set", "max_steps=1", "--set", "overwrite_output_dir=true"]) == 0
    assert _metric_steps(tmp_path / "out") == [1]


# ----- metrics.jsonl: append-only, the last record of a step wins, a torn last line is skipped ---------------

def _killed_after_step_3(tmp_path, init):
    """Checkpoint at step 2, then step 3 logged and lost with the process."""
    tr = trainer(tmp_path, init, save_steps=0)
    for _ in range(2):
        tr.train_step()
    tr.save()
    tr.train_step()
    return (steps_dir(tmp_path) / "metrics.jsonl").read_bytes()


def test_resume_appends_to_metrics_and_never_rewrites_them(tmp_path, init, straight, monkeypatch):
    before = _killed_after_step_3(tmp_path, init)
    real = type(tmp_path).write_text

    def write_text(self, *a, **k):  # the old resume rewrote metrics.jsonl in place: a kill there lost steps
        if self.name == "metrics.jsonl":
            raise Killed("while rewriting metrics.jsonl")
        return real(self, *a, **k)

    monkeypatch.setattr(type(tmp_path), "write_text", write_text)
    tr = trainer(tmp_path, init, resume=True, save_steps=0)
    records = tr.train()
    after = (steps_dir(tmp_path) / "metrics.jsonl").read_bytes()
    assert after.startswith(before) and _metric_steps(steps_dir(tmp_path)) == [1, 2, 3, 3, 4]
    latest = tr.log.read()
    assert [r["step"] for r in latest] == [1, 2, 3, 4]
    assert latest[2] == json.loads(json.dumps(records[0]))  # step 3: the resumed run's record, not the lost one
    assert_same(tr, straight)


def test_torn_last_metrics_line_is_skipped_with_a_warning(tmp_path, init, straight):
    _killed_after_step_3(tmp_path, init)
    path = steps_dir(tmp_path) / "metrics.jsonl"
    with path.open("a") as f:
        f.write('{"step": 4, "reward_mean": 0.')  # the process died inside this write
    tr = trainer(tmp_path, init, resume=True, save_steps=0, plot=True)  # plot reads the log back
    with pytest.warns(UserWarning, match=r"metrics\.jsonl line 4: skipped, not valid JSON \(a write cut short\?\)"):
        tr.train()
    lines = path.read_text().splitlines()
    assert lines[3] == '{"step": 4, "reward_mean": 0.' and json.loads(lines[4])["step"] == 3
    with pytest.warns(UserWarning, match="line 4: skipped"):
        assert [r["step"] for r in tr.log.read()] == [1, 2, 3, 4]
    assert_same(tr, straight)


def test_metrics_readers_take_the_last_record_of_each_step(tmp_path):
    from gro_kernels.trainer import metrics

    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"step": 1, "v": "a"}, {"step": 2, "v": "b"},
                                                            {"step": 3, "v": "c"}, {"step": 2, "v": "B"},
                                                            {"step": 3, "v": "C"}]))
    assert metrics.read_metrics(path) == [{"step": 1, "v": "a"}, {"step": 2, "v": "B"}, {"step": 3, "v": "C"}]
    assert len(metrics.read_metrics(path, latest=False)) == 5
