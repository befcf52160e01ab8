"""Checkpoints: policy, optimizer, scheduler, RNG states, step and config, written atomically.

A checkpoint is first written to a hidden temporary directory and then renamed into place, so a crash
never leaves a half-written `step-XXXXXXXX` directory; only complete ones are ever listed or resumed.
"""

import json
import os
import random
import shutil
from pathlib import Path
from typing import Optional

import torch

PREFIX = "step-"


def checkpoint_root(output_dir) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir) -> list:
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(output_dir) -> Optional[Path]:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir, step: int, *, policy, optimizer, scheduler, config: dict, trainer_state: dict,
                    reference=None, keep_last: int = 2) -> Path:
    """Write step `step` atomically, then delete all but the newest `keep_last` checkpoints."""
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    torch.save(policy.state_dict(), tmp / "policy.pt")
    if reference is not None:
        torch.save(reference.state_dict(), tmp / "reference.pt")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
               tmp / "optim.pt")
    (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **trainer_state}, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(old)
    return final


def load_checkpoint(path, *, policy, optimizer, scheduler, reference=None) -> dict:
    """Restore everything `save_checkpoint` wrote; returns the trainer state (with "step")."""
    path = Path(path)
    device = next(policy.parameters()).device
    policy.load_state_dict(torch.load(path / "policy.pt", map_location=device))
    if reference is not None and (path / "reference.pt").exists():
        reference.load_state_dict(torch.load(path / "reference.pt", map_location=device))
    blob = torch.load(path / "optim.pt", map_location=device, weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return json.loads((path / "trainer_state.json").read_text())
