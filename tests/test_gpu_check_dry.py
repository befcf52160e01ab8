"""benchmarks/gpu_check.py without a GPU: the CPU dry run end to end (result files, parseable verdicts), a run
whose budget is too small for any measurement, and the pure pieces the GPU run relies on (the crossover
analysis behind the `auto` recommendation, pytest count parsing)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[1]
FILES = ("summary.md", "results.csv", "verdicts.md", "environment.json", "device_tests.log")


def run_dry(out, budget_s=None, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "GRO_TEST_DEVICE")}
    env.update(GRO_GPU_CHECK_DRY="1", GRO_GPU_CHECK_OUT=str(out))
    if budget_s is not None:
        env["GRO_GPU_CHECK_BUDGET_S"] = str(budget_s)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc, parse_verdicts(out / "verdicts.md")


def parse_verdicts(path):
    """check -> (status, why); every line that is not the heading must be a verdict line."""
    verdicts = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = gpu_check.VERDICT_LINE.match(line)
        assert match, f"unparseable verdict line: {line!r}"
        verdicts[match.group(1)] = (match.group(2), match.group(3))
    return verdicts


def test_dry_run_writes_results_and_passes(tmp_path):
    proc, verdicts = run_dry(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in FILES:
        assert (tmp_path / name).is_file(), f"{name} missing"
    assert list(verdicts) == list(gpu_check.CHECKS)
    assert not [c for c, (s, _) in verdicts.items() if s == "FAIL"], verdicts
    for check in ("device-tests", "correctness", "linear_logprobs", "grpo_loss"):
        assert verdicts[check][0] == "PASS", (check, verdicts[check])
    assert verdicts["crossover"][0] == "SKIP" and "Triton" in verdicts["crossover"][1]
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0].startswith("family,model,N,H,V") and len(rows) > 20
    assert "## Verdicts" in (tmp_path / "summary.md").read_text()
    assert "[gpu-check" in proc.stdout, "progress lines go to stdout"


def test_budget_too_small_skips_cleanly(tmp_path):
    proc, verdicts = run_dry(tmp_path, budget_s=10, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert verdicts["device-tests"][0] == "SKIP" and "budget" in verdicts["device-tests"][1]
    for check in ("correctness", "linear_logprobs", "grpo_loss", "budget"):
        assert verdicts[check][0] == "SKIP", (check, verdicts[check])
    assert "skipped" in (tmp_path / "results.csv").read_text()


def test_sigterm_keeps_partial_results(tmp_path):
    """A run killed part-way (e.g. by the lease running out) leaves parseable verdicts and says so."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "GRO_TEST_DEVICE")}
    env.update(GRO_GPU_CHECK_DRY="1", GRO_GPU_CHECK_OUT=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.gpu_check"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # wait until it is inside its work, then stop it
        if "device tests:" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 3, out[-3000:]
    verdicts = parse_verdicts(tmp_path / "verdicts.md")
    assert list(verdicts) == list(gpu_check.CHECKS)
    assert verdicts["linear_logprobs"] == ("SKIP", "not reached (run cut short or an earlier step stopped it)")
    assert "interrupted" in (tmp_path / "summary.md").read_text()


def _sweep_rows(pairs):
    rows = []
    for h, (chunked, triton) in pairs.items():
        rows += [dict(H=h, method="gro_chunked", seconds=chunked), dict(H=h, method="gro_triton", seconds=triton)]
    return rows


@pytest.mark.parametrize("pairs, recommend, flip, monotonic", [
    pytest.param({1024: (1.0, 0.5), 2048: (1.0, 0.8), 3584: (1.0, 1.25), 4096: (1.0, 1.5)}, 3584, (2048, 3584), True,
                 id="flip-between-2048-and-3584"),
    pytest.param({1024: (1.0, 1.2), 4096: (1.0, 2.0)}, 1024, None, True, id="chunked-everywhere"),
    pytest.param({1024: (1.0, 0.5), 4096: (1.0, 0.9)}, None, None, True, id="triton-everywhere"),
    pytest.param({1024: (1.0, 1.1), 2048: (1.0, 0.9), 4096: (1.0, 1.2)}, 4096, (2048, 4096), False,
                 id="not-monotonic"),
])
def test_crossover_summary(pairs, recommend, flip, monotonic):
    """(chunked s, triton s) per H -> the threshold from which chunked stays faster, and the interpolated flip."""
    result = gpu_check.crossover_summary(_sweep_rows(pairs) + [dict(H=1024, method="gemm4", seconds=0.1)])
    assert result["recommend"] == recommend
    assert "not changed" in result["text"] and "CHUNKED_MIN_HIDDEN_CUDA" in result["text"]
    if flip is None:
        assert result["flip_h"] is None
    else:
        assert flip[0] < result["flip_h"] < flip[1]
    assert ("not monotonic" in result["text"]) != monotonic


def test_crossover_summary_without_pairs():
    assert gpu_check.crossover_summary([dict(H=1024, method="gro_chunked", seconds=1.0)])["recommend"] is None


def test_pytest_counts_finished_and_cut_short():
    finished = ["..s.F", "FAILED tests/device/x.py::t - boom", "1 failed, 3 passed, 1 skipped, 2 deselected in 3.2s"]
    assert gpu_check.parse_pytest_counts(finished, True) == dict(failed=1, passed=3, skipped=1, deselected=2)
    cut = ["........s.                                                      [ 40%]", "..F"]
    assert gpu_check.parse_pytest_counts(cut, False) == dict(passed=11, failed=1, errors=0, skipped=1)
