"""The study's outputs from its runs: summary.csv (one row per run), table.md (mean ± std over seeds per task and
method) and PNG plots (held-out reward vs sampled tokens and vs wall time, KL to the initial policy, entropy,
final accuracy), plus the environment a reader needs to reproduce a row."""

import csv
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path

COLUMNS = ("final_accuracy", "final_reward", "kl_to_initial", "entropy", "sampled_tokens", "wall_s", "steps")


def environment(root: Path) -> dict:
    import tokenizers
    import torch
    import transformers

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "platform": platform.platform(), "cpu": cpu or platform.processor(),
            "cpu_count": os.cpu_count(), "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def write_summary(rows, out: Path):
    with (out / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def cells(rows):
    """{(task, method): [row per seed]} in config order."""
    out = {}
    for r in rows:
        out.setdefault((r["task"], r["method"]), []).append(r)
    return out


def write_table(rows, out: Path, seeds: int) -> str:
    head = ("| task | method | seeds | held-out accuracy | held-out reward | KL to initial | entropy | sampled tokens | "
            "train wall s |")
    lines = [f"Mean ± std over the seeds of each cell (up to {seeds}); held-out metrics after the last update (greedy answers for "
             "accuracy/reward; KL and entropy per token on sampled answers). Sampled tokens include the offline "
             "pool for offline_dpo and hybrid_*.", "", head, "|" + "---|" * 9]
    for (task, method), group in cells(rows).items():
        fmt = []
        for key, digits in (("final_accuracy", 3), ("final_reward", 3), ("kl_to_initial", 3), ("entropy", 3),
                            ("sampled_tokens", 0), ("wall_s", 1)):
            m, s = mean_std([g[key] for g in group])
            fmt.append(f"{m:.{digits}f} ± {s:.{digits}f}")
        lines.append(f"| {task} | {method} | {len(group)} | " + " | ".join(fmt) + " |")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    return text


def _curves(out: Path, task: str, method: str):
    runs = []
    for path in sorted((out / "runs" / task / method).glob("seed*/curve.jsonl")):
        runs.append([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
    return runs


# 13 methods: ten tab10 colours, then three dark ones; dashed lines for the runs that use the offline pool.
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#000000", "#555555", "#003f5c")


def _color(i):
    return _COLORS[i % len(_COLORS)]


def _style(method):
    return "--" if method.startswith(("hybrid", "offline")) else "-"


def plot(rows, out: Path, methods, tasks):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("sampled_tokens", "eval_reward", "held-out reward vs sampled tokens"),
              ("wall_s", "eval_reward", "held-out reward vs train wall time (s)"),
              ("step", "eval_reward", "held-out reward vs update step"),
              ("sampled_tokens", "eval_accuracy", "held-out accuracy (exact) vs sampled tokens"),
              ("sampled_tokens", "kl_to_initial", "KL(policy || initial) per token"),
              ("sampled_tokens", "entropy", "policy entropy per token"))
    for task in tasks:
        fig, axes = plt.subplots(2, 3, figsize=(18, 9))
        for i, method in enumerate(methods):
            runs = _curves(out, task, method)
            if not runs:
                continue
            for ax, (x, y, title) in zip(axes.flat, panels):
                n = min(len(r) for r in runs)  # seeds stop within a step of each other; plot the common evals
                xs = [statistics.fmean(r[k][x] for r in runs) for k in range(n)]
                ys = [[r[k][y] for r in runs] for k in range(n)]
                mid = [statistics.fmean(v) for v in ys]
                ax.plot(xs, mid, color=_color(i), linestyle=_style(method), label=method, marker=".")
                if len(runs) > 1:  # spread over seeds: min to max
                    ax.fill_between(xs, [min(v) for v in ys], [max(v) for v in ys], color=_color(i), alpha=0.1)
                ax.set_title(title)
                ax.set_xlabel(x.replace("_", " "))
        axes.flat[0].legend(fontsize=7, ncol=2)
        fig.suptitle(f"task '{task}': mean over seeds, band = min..max over seeds")
        fig.tight_layout()
        fig.savefig(out / f"curves_{task}.png", dpi=90)
        plt.close(fig)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4.5), squeeze=False)
    table = cells(rows)
    for ax, task in zip(axes.flat, tasks):
        names = [m for m in methods if (task, m) in table]
        stats = [mean_std([g["final_accuracy"] for g in table[(task, m)]]) for m in names]
        ax.bar(range(len(names)), [s[0] for s in stats], yerr=[s[1] for s in stats], color=[_color(methods.index(m))
                                                                                               for m in names])
        ax.set_xticks(range(len(names)), names, rotation=70, fontsize=8)
        ax.set_title(f"{task}: held-out accuracy (mean ± std)")
    fig.tight_layout()
    fig.savefig(out / "final_accuracy.png", dpi=90)
    plt.close(fig)
