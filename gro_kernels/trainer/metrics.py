"""Per-step metrics: JSONL log, one-line summaries, peak memory, and the reward/KL plot."""

import json
import logging
import math
import os
import warnings
from pathlib import Path

import torch

logger = logging.getLogger("gro_kernels.trainer")
SUMMARY_KEYS = ("reward_mean", "reward_std", "kl", "loss", "grad_norm", "tokens_per_s")


class MetricsLog:
    """One JSON object per step, appended to `path` and never rewritten: a resumed run appends the steps it
    redoes, and readers (read_metrics) take the last record of each step. A line torn by a kill mid-write is
    left in place, closed by the next append, and skipped with a warning when read."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._checked_tail = False

    def write(self, record: dict):
        clean = {k: _plain(v) for k, v in record.items()}
        with self.path.open("a") as f:
            if not self._checked_tail:
                f.write("\n" if _ends_inside_a_line(self.path) else "")
                self._checked_tail = True
            f.write(json.dumps(clean) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a step's record survives a crash right after it

    def read(self, latest: bool = True) -> list:
        return read_metrics(self.path, latest)


def _ends_inside_a_line(path: Path) -> bool:
    if not path.exists() or path.stat().st_size == 0:
        return False
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        torn = f.read(1) != b"\n"
    if torn:
        logger.warning(f"{path} ends inside a line (a write cut short); appending from a new line")
    return torn


def read_metrics(path, latest: bool = True) -> list:
    """The records of a metrics.jsonl: with `latest`, the last record of each step, by step (a resumed run
    re-logs the steps after its checkpoint); else every record in file order. Lines that are not valid
    JSON (a write cut short) are skipped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            warnings.warn(f"{path.name} line {number}: skipped, not valid JSON (a write cut short?): {line[:60]!r}",
                          stacklevel=2)
    if not latest:
        return records
    by_step = {r.get("step"): r for r in records}
    return [by_step[k] for k in sorted(by_step, key=lambda k: (k is None, k if isinstance(k, int) else 0))]


def _plain(v):
    if isinstance(v, torch.Tensor):
        v = v.detach().float().item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def summary_line(record: dict) -> str:
    parts = [f"step {record['step']}"]
    for key in SUMMARY_KEYS:
        if key in record and isinstance(record[key], (int, float)):
            parts.append(f"{key} {record[key]:.4g}")
    return " | ".join(parts)


class PeakMemory:
    """Peak memory over a region: CUDA allocator peak on GPU; on CPU the process RSS high-water mark,
    reset through /proc/self/clear_refs (Linux). Returns MB, or None where it cannot be measured."""

    def __init__(self, device):
        self.device = torch.device(device)

    def reset(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    def peak_mb(self):
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None


def plot_curves(records: list, path) -> Path:
    """PNG of mean reward (with ±std band) and KL against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    reward = [r.get("reward_mean", float("nan")) for r in records]
    std = [r.get("reward_std", 0.0) for r in records]
    kl = [r.get("kl", float("nan")) if isinstance(r.get("kl"), (int, float)) else float("nan") for r in records]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(steps, reward, color="tab:blue")
    ax1.fill_between(steps, [m - s for m, s in zip(reward, std)], [m + s for m, s in zip(reward, std)],
                     color="tab:blue", alpha=0.15)
    ax1.set_xlabel("step")
    ax1.set_ylabel("reward (mean ± std)")
    if any(k == k for k in kl):
        ax2.plot(steps, kl, color="tab:red")
    else:
        ax2.text(0.5, 0.5, "no KL logged (no reference model)", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_xlabel("step")
    ax2.set_ylabel("KL to reference")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
