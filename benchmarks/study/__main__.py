"""python -m benchmarks.study [--quick] [--config FILE] [--out DIR] [--workers N]: every method of the config on
every task and seed, then the table and plots (benchmarks/results/study/ by default)."""

import argparse
import copy
import json
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import yaml

from . import report
from .run import make_pool, run_one

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = Path(__file__).with_name("config.yaml")


def load(path: Path, quick: bool, budget_scale: float = 1.0) -> dict:
    """The study config; --quick applies its `quick` section; budget_scale multiplies every task's budget (the
    resolved budgets are what the run writes next to its results)."""
    study = yaml.safe_load(path.read_text())
    overrides = study.pop("quick", {})
    if quick:
        study["seeds"] = overrides["seeds"]
        study["tasks"] = {t: study["tasks"][t] for t in overrides["tasks"]}
        budget_scale = budget_scale * overrides["budget_scale"]
        for key in ("num_eval_prompts", "num_evals"):
            study[key] = overrides[key]
    if not budget_scale > 0:
        raise ValueError(f"budget_scale must be > 0, got {budget_scale}")
    for spec in study["tasks"].values():
        spec["budget_tokens"] = int(round(spec["budget_tokens"] * budget_scale))
    unknown = set(study) - {"seeds", "data_seed", "num_eval_prompts", "num_evals", "max_steps_factor", "workers",
                            "model", "trainer", "tasks", "methods"}
    if unknown:
        raise ValueError(f"study config {path} has unknown keys {sorted(unknown)}")
    return study


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.study", description=__doc__)
    p.add_argument("--quick", action="store_true", help="one seed, one task, small budget (about 2 minutes)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--out", type=Path, default=None, help="default benchmarks/results/study[/quick]")
    p.add_argument("--budget-scale", type=float, default=1.0,
                   help="multiply every task's sampled-token budget (e.g. 0.33 on a shared machine)")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild table and plots from the finished runs in --out (e.g. of a study cut short)")
    p.add_argument("--workers", type=int, default=None, help="runs in parallel (default: the config's workers)")
    args = p.parse_args(argv)
    study = load(args.config, args.quick, args.budget_scale)
    out = args.out or ROOT / "benchmarks" / "results" / "study" / ("quick" if args.quick else "")
    tasks, methods, seeds = list(study["tasks"]), list(study["methods"]), study["seeds"]
    if args.report_only:
        study = yaml.safe_load((out / "config.yaml").read_text())
        rows = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/*/seed*/summary.json"))]
        _report(rows, out, list(study["tasks"]), list(study["methods"]), study["seeds"])
        return 0
    for stale in ("runs", "pools"):
        shutil.rmtree(out / stale, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    env = dict(report.environment(ROOT), command=" ".join([sys.executable, "-m", "benchmarks.study", *(argv or
                                                                                                     sys.argv[1:])]),
               started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    (out / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    workers = args.workers or study["workers"]
    pooled = any(m.get("offline") for m in study["methods"].values())
    start = time.perf_counter()
    rows = _execute(study, out, workers, tasks, methods, seeds, pooled)
    env["elapsed_s"] = round(time.perf_counter() - start, 1)
    (out / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    shutil.rmtree(out / "pools", ignore_errors=True)  # rebuilt from the seeds; not worth committing
    _report(rows, out, tasks, methods, seeds)
    print(f"study done in {env['elapsed_s']:.0f} s; results in {out}")
    return 0


def _report(rows, out, tasks, methods, seeds):
    order = {(t, m, s): i for i, (t, m, s) in enumerate((t, m, s) for t in tasks for m in methods for s in seeds)}
    rows.sort(key=lambda r: order[(r["task"], r["method"], r["seed"])])
    report.write_summary(rows, out)
    print(report.write_table(rows, out, len({r["seed"] for r in rows})))
    report.plot(rows, out, methods, tasks)


def _execute(study, out, workers, tasks, methods, seeds, pooled):
    from tqdm.auto import tqdm

    jobs = [(t, m, s) for s in seeds for t in tasks for m in methods]  # seed-major: a cut-short study has whole seeds
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as ex:
        if pooled:
            futures = [ex.submit(make_pool, study, t, s, out) for t in tasks for s in seeds]
            for f in tqdm(futures, desc="offline pools", file=sys.stdout):
                f.result()
        futures = [ex.submit(run_one, study, t, m, s, out) for t, m, s in jobs]
        rows = []
        with tqdm(total=len(futures), desc="study runs", file=sys.stdout) as bar:
            for f in futures:
                row = f.result()
                rows.append(row)
                bar.update(1)
                bar.set_postfix_str(f"{row['task']}/{row['method']}/s{row['seed']} acc={row['final_accuracy']:.2f}")
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
