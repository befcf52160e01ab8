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


def load(path: Path, quick: bool) -> dict:
    study = yaml.safe_load(path.read_text())
    overrides = study.pop("quick", {})
    if quick:
        study["seeds"] = overrides["seeds"]
        study["tasks"] = {t: dict(study["tasks"][t], budget_tokens=overrides["budget_tokens"])
                          for t in overrides["tasks"]}
        for key in ("num_eval_prompts", "num_evals"):
            study[key] = overrides[key]
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
    p.add_argument("--workers", type=int, default=None, help="runs in parallel (default: the config's workers)")
    args = p.parse_args(argv)
    study = load(args.config, args.quick)
    out = args.out or ROOT / "benchmarks" / "results" / "study" / ("quick" if args.quick else "")
    for stale in ("runs", "pools"):
        shutil.rmtree(out / stale, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    env = dict(report.environment(ROOT), command=" ".join([sys.executable, "-m", "benchmarks.study", *(argv or
                                                                                                     sys.argv[1:])]),
               started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    workers = args.workers or study["workers"]
    tasks, methods, seeds = list(study["tasks"]), list(study["methods"]), study["seeds"]
    pooled = any(m.get("offline") for m in study["methods"].values())
    start = time.perf_counter()
    rows = _execute(study, out, workers, tasks, methods, seeds, pooled)
    env["elapsed_s"] = round(time.perf_counter() - start, 1)
    (out / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    shutil.rmtree(out / "pools", ignore_errors=True)  # rebuilt from the seeds; not worth committing
    for r in rows:
        shutil.rmtree(out / "runs" / r["task"] / r["method"] / f"seed{r['seed']}" / "trainer", ignore_errors=True)
    order = {(t, m, s): i for i, (t, m, s) in enumerate((t, m, s) for t in tasks for m in methods for s in seeds)}
    rows.sort(key=lambda r: order[(r["task"], r["method"], r["seed"])])
    report.write_summary(rows, out)
    print(report.write_table(rows, out, len(seeds)))
    report.plot(rows, out, methods, tasks)
    print(f"study done in {env['elapsed_s']:.0f} s; results in {out}")
    return 0


def _execute(study, out, workers, tasks, methods, seeds, pooled):
    from tqdm.auto import tqdm

    jobs = [(t, m, s) for t in tasks for s in seeds for m in methods]
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as ex:
        if pooled:
            futures = [ex.submit(make_pool, study, t, s, out) for t in tasks for s in seeds]
            for f in tqdm(futures, desc="offline pools", file=sys.stdout):
                f.result()
        # the slow methods first, so the last minutes are not one long run alone
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
