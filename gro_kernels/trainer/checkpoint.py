"""Checkpoints: policy, optimizer, scheduler, RNG states, step and config; atomic, durable and verified.

Save: every file is written and fsynced inside a hidden temporary directory, then manifest.json (each
file's size and sha256) is written last; the directory is fsynced, renamed into place and its parent
fsynced. So a `step-XXXXXXXX` directory is complete with its manifest, or absent, whatever the moment of
a crash; a leftover temporary directory is removed by the next save or resume.
Load: the manifest is checked first, so a damaged file (a flipped bit, a truncated write, a deleted or
edited file) is a CheckpointError naming the checkpoint and the file, never loaded silently;
`load_newest_intact` falls back to the newest checkpoint that verifies, warning about each one skipped.
"""

import hashlib
import json
import logging
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Optional, Tuple

import torch

PREFIX = "step-"
TMP_PREFIX = ".tmp-" + PREFIX
REPLACED = "-replaced-"            # an older copy of a step moved aside while that step is written again
MANIFEST = "manifest.json"
REQUIRED = ("policy.pt", "optim.pt", "config.json", "trainer_state.json")
FORMAT = 1
logger = logging.getLogger("gro_kernels.trainer")


class CheckpointError(ValueError):
    """A checkpoint that does not verify (no or torn manifest, a file missing, of the wrong size or hash)."""

    def __init__(self, path, reason: str):
        super().__init__(f"checkpoint {path}: {reason}")
        self.path, self.reason = Path(path), reason


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped: resume fell back to an older one."""


def checkpoint_root(output_dir) -> Path:
    return Path(output_dir) / "checkpoints"


def _step_of(path: Path) -> Optional[int]:
    digits = path.name[len(PREFIX):]
    return int(digits) if path.name.startswith(PREFIX) and digits.isdigit() else None


def list_checkpoints(output_dir) -> list:
    """Every `step-XXXXXXXX` directory, oldest first (intact or not: see verify_checkpoint)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _step_of(p) is not None]
    return sorted(found, key=_step_of)


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


# ----- save -------------------------------------------------------------------------------------------

def save_checkpoint(output_dir, step: int, *, policy, optimizer, scheduler, config: dict, trainer_state: dict,
                    reference=None, keep_last: int = 2) -> Path:
    """Write step `step` atomically and durably, then delete all but the newest `keep_last` checkpoints."""
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    clean_temporaries(output_dir)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f"{TMP_PREFIX}{step:08d}-{os.getpid()}"
    tmp.mkdir()
    try:
        _write_files(tmp, step, policy, optimizer, scheduler, config, trainer_state, reference)
        _write_manifest(tmp, step)  # last: a manifest means every file it lists is complete
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)  # an error, not a crash: leave nothing behind
        raise
    _fsync(tmp)
    _install(tmp, final)
    _fsync(root)
    _prune(output_dir, keep_last)
    return final


def _write_files(tmp: Path, step, policy, optimizer, scheduler, config, trainer_state, reference):
    torch.save(policy.state_dict(), tmp / "policy.pt")
    _fsync(tmp / "policy.pt")
    if reference is not None:
        torch.save(reference.state_dict(), tmp / "reference.pt")
        _fsync(tmp / "reference.pt")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
               tmp / "optim.pt")
    _fsync(tmp / "optim.pt")
    _write_text(tmp / "config.json", json.dumps(config, indent=2, default=str))
    _write_text(tmp / "trainer_state.json", json.dumps({"step": step, **trainer_state}, indent=2))


def _write_manifest(tmp: Path, step: int):
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
    _write_text(tmp / MANIFEST, json.dumps({"format": FORMAT, "step": step, "files": files}, indent=2))


def _install(tmp: Path, final: Path):
    """Rename tmp to final. A directory cannot be renamed over a non-empty one, so an older copy of the same
    step (a re-save after resume, or one found damaged) is moved aside first; should a crash fall between
    the two renames, clean_temporaries puts the aside copy back."""
    if not final.exists():
        os.replace(tmp, final)
        return
    aside = final.with_name(f"{TMP_PREFIX}{_step_of(final):08d}{REPLACED}{os.getpid()}")
    os.replace(final, aside)
    os.replace(tmp, final)
    shutil.rmtree(aside)


def _prune(output_dir, keep_last: int):
    for old in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(old)


def clean_temporaries(output_dir) -> list:
    """Remove what an interrupted save left (`.tmp-step-*`), restoring a step moved aside by `_install` if
    its new copy never arrived. Returns the paths removed or restored."""
    root = checkpoint_root(output_dir)
    done = []
    for tmp in sorted(root.glob(TMP_PREFIX + "*")) if root.is_dir() else []:
        final = root / tmp.name[len(".tmp-"):].split(REPLACED)[0]
        if REPLACED in tmp.name and not final.exists():
            os.replace(tmp, final)
            logger.warning(f"restored {final.name} from {tmp.name} (a re-save of that step was interrupted)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            logger.warning(f"removed {tmp} (left by an interrupted checkpoint save)")
        done.append(tmp)
    return done


def _write_text(path: Path, text: str):
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path):
    """Flush a file's data, or a directory's entries (so a rename survives a power cut), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----- load -------------------------------------------------------------------------------------------

def verify_checkpoint(path) -> dict:
    """The manifest of `path` once every file it lists has its recorded size and sha256; else CheckpointError."""
    path = Path(path)
    manifest = _read_manifest(path)
    step = _step_of(path)
    if manifest.get("step") != step:
        raise CheckpointError(path, f"{MANIFEST} is for step {manifest.get('step')!r}, the directory for step {step}")
    for name, want in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(path, f"{name} is missing")
        size = file.stat().st_size
        if size != want.get("size"):
            raise CheckpointError(path, f"{name} has {size} bytes, the manifest says {want.get('size')} (truncated "
                                        f"or overwritten)")
        digest = _sha256(file)
        if digest != want.get("sha256"):
            raise CheckpointError(path, f"{name} has sha256 {digest[:16]}..., the manifest says "
                                        f"{str(want.get('sha256'))[:16]}... (changed after it was written)")
    return manifest


def _read_manifest(path: Path) -> dict:
    if not path.is_dir():
        raise CheckpointError(path, "not a directory")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(path, f"no {MANIFEST} (it is written last: the save did not finish, or the "
                                    f"checkpoint predates manifests; load_checkpoint(verify=False) skips the check)")
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(path, f"{MANIFEST} is not valid JSON ({err})") from err
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        raise CheckpointError(path, f"{MANIFEST} has no 'files' mapping of name -> {{size, sha256}}")
    missing = [name for name in REQUIRED if name not in files]
    if missing or any(Path(name).name != name for name in files):
        raise CheckpointError(path, f"{MANIFEST} lists {sorted(files)}; it must list {list(REQUIRED)} by plain name")
    return manifest


def load_checkpoint(path, *, policy, optimizer, scheduler, reference=None, verify: bool = True) -> dict:
    """Restore everything `save_checkpoint` wrote; returns the trainer state (with "step"). The manifest is
    verified before anything is loaded (verify=False skips that, e.g. for a checkpoint without one)."""
    path = Path(path)
    if verify:
        verify_checkpoint(path)
    device = next(policy.parameters()).device
    policy.load_state_dict(torch.load(path / "policy.pt", map_location=device))
    if reference is not None and (path / "reference.pt").exists():
        reference.load_state_dict(torch.load(path / "reference.pt", map_location=device))
    blob = torch.load(path / "optim.pt", map_location=device, weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return json.loads((path / "trainer_state.json").read_text())


def load_newest_intact(output_dir, **targets) -> Tuple[Path, dict]:
    """Load the newest checkpoint that verifies, warning (CheckpointWarning) about each newer damaged one.
    FileNotFoundError if there is none at all; CheckpointError naming every one if all are damaged."""
    found = list_checkpoints(output_dir)
    if not found:
        raise FileNotFoundError(f"resume: no checkpoint under {checkpoint_root(output_dir)}")
    broken = []
    for path in reversed(found):
        try:
            verify_checkpoint(path)
        except CheckpointError as err:
            broken.append(err)
            warnings.warn(f"resume: skipping damaged {err}; trying the one before", CheckpointWarning, stacklevel=2)
            continue
        return path, load_checkpoint(path, verify=False, **targets)
    raise CheckpointError(checkpoint_root(output_dir), "no intact checkpoint to resume from; "
                          + "; ".join(f"{e.path.name}: {e.reason}" for e in broken))
