"""GPU check (issue #17): build, device tests and GPU benchmarks in one run that fits 8 minutes.

    make gpu-check                      # python -m benchmarks.gpu_check, on a machine with a CUDA device
    make gpu-check GRO_GPU_CHECK_DRY=1  # the CPU dry run of the same script (tiny shapes, < 2 minutes)

Nothing is installed (the preinstalled torch and Triton are used; no network). Steps, in order:
  0. build gro_kernels._C in place for the device's arch (TORCH_CUDA_ARCH_LIST from
     torch.cuda.get_device_capability, CUDA_HOME detected), recording its time and, on failure, its output;
  1. the device tests: GRO_TEST_DEVICE=cuda python -m pytest tests/device -q, with a timeout; counts;
  2. bf16 benchmarks at real LM-head shapes (Qwen2.5-7B: H 3584, V 152064; Llama-3-8B: H 4096, V 128256):
     linear_logprobs fwd+bwd with a random upstream gradient (4 GEMMs is the floor) and the GRPO loss
     (gro_loss preset dapo, given advantages, old and ref logprobs, beta 0.04; 3 GEMMs is the floor with the
     gradient computed in the forward), for gro with each backend (chunked, triton, auto), the naive
     materialized path, the bare cuBLAS GEMMs, and the peers that are importable (torch's chunked
     F.linear_cross_entropy, TRL's ChunkedLogProbFunction, Liger-Kernel); median time of CUDA events,
     useful TFLOP/s, ratio to the bare GEMMs, peak CUDA memory; then a sweep over H (N 16384, V 128256)
     that locates the Triton / chunked crossover and prints the value the `auto` rule
     (CHUNKED_MIN_HIDDEN_CUDA) should take. The rule itself is not changed here.
  3. results in GRO_GPU_CHECK_OUT (default benchmarks/results/gpu): summary.md, results.csv, verdicts.md
     (one `check: PASS|FAIL|SKIP - why` line per check), gpu_check.png (matplotlib permitting),
     environment.json, build.log, device_tests.log. Every file is rewritten after each measurement, so a
     run that is killed keeps what it measured (checks not reached read "SKIP - not reached").

Environment: GRO_GPU_CHECK_BUDGET_S (default 480: the whole run, build included; work that would not fit is
skipped with a note), GRO_GPU_CHECK_OUT (on a borrowed machine, a folder that comes back, e.g. $OUT/gpu),
GRO_GPU_CHECK_DRY=1.

Dry run (GRO_GPU_CHECK_DRY=1, no GPU needed): no build (the extension already built here is used), device
tests with GRO_TEST_DEVICE=cpu, the same benchmark code at tiny shapes in fp32 on CPU tensors, timed with
time.perf_counter, memory as the RSS high-water mark; Triton and the GPU-only peers are skipped with a note.
Results default to build/gpu_check_dry (ignored by git).

Sizing: why the default plan fits 480 s (estimates, no GPU has run this yet). An H200 bf16 GEMM runs
~790 TFLOP/s. One GEMM of the head is 2*N*H*V FLOP: 1.05 GFLOP per token for Llama-3-8B, 1.09 for
Qwen2.5-7B. The 4 GEMMs of N 32768 x H 4096 x V 128256 are 4*2*N*H*V = 138 TFLOP = 0.18 s; N 16384 0.09 s,
N 4096 0.02 s: 0.29 s per model for the three N.
  - per measured method: 1 warm-up + 3 timed + 1 memory call = 5 calls; per shape the methods cost, in
    units of the 4 GEMMs, bare 1 + chunked 1.2 + Triton 3 (its atomic backward is bounded at 3.7x on paper)
    + auto 1.2 + naive 1.5 + up to 3 peers at ~1 = ~11 units: 11 x 5 x 0.29 s = 16 s per model and family,
    2 models x 2 families (the loss costs about the same) = ~64 s;
  - the H sweep (N 16384, V 128256, H 1024 ... 5120): the 4 GEMMs take 2.1e-5 s x H, 0.34 s for the five H;
    bare + chunked + Triton = 5.2 units x 5 calls = ~9 s;
  - fixed: start-up ~10 s, the build ~60 s (one arch, nvcc; 51 s for CPU + 2 archs on 2 cores here; capped
    at 180 s), the device tests ~90 s (pytest start, Triton JIT of ~30 kernel variants, one inductor
    compile; capped at 180 s), Triton JIT at the benchmark shapes ~30 s, inputs and checks ~10 s.
  Total ~275 s of 480 s. Before each measurement its cost is estimated pessimistically (its FLOPs at
  300 TFLOP/s x 5 calls, + 30 s the first time Triton runs) and it is skipped when it would not fit in the
  budget minus a 15 s reserve for writing results. Order: N 4096, N 16384, the H sweep, N 32768, so a slow
  run loses the largest N first and keeps the crossover. The naive path holds ~28 bytes per logit at its
  peak (bf16 logits, fp32 copy, log-softmax, its exp, the fp32 gradient): at N 32768 x V 152064 (5.0e9
  logits) that is 140 GB, more than the 139 GiB H200; a method is skipped when its estimate (32 B/logit
  for naive) exceeds 90% of the free device memory.
"""

import csv
import glob
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

import torch

from benchmarks import common

START = time.monotonic()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRY = os.environ.get("GRO_GPU_CHECK_DRY") == "1"
BUDGET_S = float(os.environ.get("GRO_GPU_CHECK_BUDGET_S", "480"))
OUT = os.environ.get("GRO_GPU_CHECK_OUT") or os.path.join(ROOT, "build/gpu_check_dry" if DRY else
                                                          "benchmarks/results/gpu")
RESERVE_S = 15.0  # kept for writing the results after the last measurement
BUILD_CAP_S, TESTS_CAP_S = 180.0, 180.0
BETA, EPS_LOW, EPS_HIGH = 0.04, 0.2, 0.28  # the dapo preset's clip range, with a KL term
GIB, MIB = 2.0 ** 30, 2.0 ** 20


class Plan:
    """Shapes and repeat counts of one run: the GPU plan, or the tiny CPU dry-run plan."""

    def __init__(self, dry: bool):
        self.dry = dry
        self.dtype = torch.float32 if dry else torch.bfloat16  # CPU bf16 GEMMs are slow and not the point
        self.models = {"tiny-a": (128, 4000), "tiny-b": (256, 6000)} if dry else \
            {"qwen2.5-7b": (3584, 152064), "llama3-8b": (4096, 128256)}
        self.ns = (256, 1024) if dry else (4096, 16384, 32768)
        self.seq_len = 128 if dry else 1024  # GRPO batch: B = N / T sequences of T tokens
        self.sweep = dict(n=512, v=4000, hs=(64, 128, 256)) if dry else \
            dict(n=16384, v=128256, hs=(1024, 2048, 3584, 4096, 5120))
        self.sweep_before_n = 1024 if dry else 32768  # run the sweep before this N (keeps it if time runs out)
        self.repeats, self.warmup = (2, 1) if dry else (3, 1)
        # Pessimistic FLOP rate for the budget estimates, and the first-Triton-call JIT allowance.
        self.flops_per_s = 20e9 if dry else 300e12
        self.triton_jit_s = 0.0 if dry else 30.0

    def points(self):
        """(model, N) in run order, with the H sweep ("sweep", None) placed before sweep_before_n."""
        order = []
        for n in self.ns:
            if n == self.sweep_before_n:
                order.append(("sweep", None))
            order += [(model, n) for model in self.models]
        if ("sweep", None) not in order:
            order.append(("sweep", None))
        return order


# --------------------------------------------------------------------------------------------- reporting
CHECKS = ("device", "build", "extension", "device-tests", "correctness", "linear_logprobs", "grpo_loss", "peers",
          "crossover", "budget")
VERDICT_LINE = re.compile(r"^([\w.-]+): (PASS|FAIL|SKIP) - (.+)$")
CSV_KEYS = ("family", "model", "N", "H", "V", "dtype", "method", "backend", "seconds", "useful_tflops",
            "x_gemms", "peak_mib", "extra_mib", "loss_rel_diff", "status", "note")


class Interrupted(BaseException):
    """SIGTERM / SIGINT: stop measuring, write what there is. A BaseException, so that the handlers that keep
    the run going past one failing method or peer (`except Exception`) do not swallow it."""


class Report:
    """Rows, verdicts and notes of the run; every change is written to OUT at once (atomic renames)."""

    def __init__(self, out: str, plan: Plan):
        self.out, self.plan = out, plan
        self.rows, self.notes, self.env = [], [], {}
        self.verdicts = {name: ("SKIP", "not reached (run cut short or an earlier step stopped it)")
                         for name in CHECKS}
        self.budget_skips = 0
        self.triton_warm = False  # the first Triton measurement also pays the JIT compile (budget estimate)
        os.makedirs(out, exist_ok=True)

    @staticmethod
    def elapsed() -> float:
        return time.monotonic() - START

    def left(self) -> float:
        return BUDGET_S - self.elapsed()

    def fits(self, estimate_s: float) -> bool:
        return self.left() - RESERVE_S >= estimate_s

    def log(self, message: str):
        print(f"[gpu-check {self.elapsed():6.1f}s] {message}", flush=True)

    def verdict(self, check: str, status: str, why: str):
        why = " ".join(str(why).split())[:400] or "-"
        self.verdicts[check] = (status, why)
        self.log(f"{check}: {status} - {why}")
        self.write()

    def note(self, text: str):
        if text not in self.notes:
            self.notes.append(text)
            self.log(f"note: {text}")

    def add_row(self, row: dict):
        self.rows.append(row)
        self.write()

    def verdict_text(self) -> str:
        mode = "dry run (CPU)" if self.plan.dry else "CUDA"
        lines = [f"# gpu-check verdicts, {mode}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]
        lines += [f"{name}: {status} - {why}" for name, (status, why) in self.verdicts.items()]
        return "\n".join(lines) + "\n"

    def write(self):
        self._atomic("verdicts.md", self.verdict_text())
        self._atomic("summary.md", summary_markdown(self))
        with open(self._tmp("results.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_KEYS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(self._tmp("results.csv"), os.path.join(self.out, "results.csv"))
        self._atomic("environment.json", json.dumps(self.env, indent=1, default=str))

    def _tmp(self, name):
        return os.path.join(self.out, f".{name}.tmp")

    def _atomic(self, name, text):
        with open(self._tmp(name), "w") as f:
            f.write(text)
        os.replace(self._tmp(name), os.path.join(self.out, name))


def _fmt(value, spec):
    return "-" if value is None or value == "" else format(value, spec) if spec else str(value)


def _table(rows, columns):
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(k), spec) for k, _, spec in columns) + " |" for r in rows]
    return "\n".join(lines)


BENCH_COLUMNS = [("model", "model", ""), ("N", "N", ""), ("method", "method", ""), ("backend", "runs", ""),
                 ("seconds", "median s", ".4f"), ("useful_tflops", "useful TFLOP/s", ".3g"),
                 ("x_gemms", "x bare GEMMs", ".2f"), ("peak_mib", "peak MiB", ".0f"),
                 ("extra_mib", "extra MiB", ".0f"), ("loss_rel_diff", "loss rel diff", ".1e"), ("status", "status", ""),
                 ("note", "note", "")]


def summary_markdown(report: Report) -> str:
    plan = report.plan
    dtype = str(plan.dtype).replace("torch.", "")
    parts = [f"# gpu-check summary ({'dry run on CPU, tiny shapes' if plan.dry else 'CUDA'})", "",
             f"Environment: `{json.dumps(report.env, default=str)}`", "",
             f"Elapsed {report.elapsed():.0f} s of a {BUDGET_S:.0f} s budget.", "", "## Verdicts", "", "```",
             report.verdict_text().split("\n", 2)[2].rstrip(), "```", ""]
    fams = [("linear_logprobs", f"linear_logprobs fwd+bwd, random upstream gradient, {dtype} (x the 4 bare GEMMs)"),
            ("grpo_loss", f"GRPO loss (gro_loss preset dapo, given advantages, old + ref logprobs, beta {BETA}), "
                          f"{dtype}, hidden -> loss fwd+bwd (x the 3 bare GEMMs)")]
    for family, title in fams:
        rows = [r for r in report.rows if r["family"] == family]
        if rows:
            parts += [f"## {title}", "", _table(rows, BENCH_COLUMNS), ""]
    sweep = [r for r in report.rows if r["family"] == "crossover"]
    if sweep:
        s = plan.sweep
        parts += [f"## Triton vs chunked by hidden size (N {s['n']}, V {s['v']}, {dtype}, linear_logprobs fwd+bwd)",
                  "", _table(sweep, [("H", "H", "")] + BENCH_COLUMNS[2:]), ""]
        analysis = crossover_summary(sweep)
        parts += [analysis["text"], ""]
    if report.notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    return "\n".join(parts)


def write_plot(report: Report):
    """results as gpu_check.png: x bare GEMMs by N per method (both families), and the H sweep."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        report.note("matplotlib not importable: no gpu_check.png")
        return
    ok = [r for r in report.rows if r.get("seconds") is not None]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    for ax, family in zip(axes[:2], ("linear_logprobs", "grpo_loss")):
        series = sorted({(r["model"], r["method"]) for r in ok if r["family"] == family})
        for i, (model, method) in enumerate(series):
            pts = sorted((r["N"], r["x_gemms"]) for r in ok if r["family"] == family and r["model"] == model
                         and r["method"] == method and r.get("x_gemms") is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{method} ({model})", color=f"C{i % 10}")
        ax.set(title=f"{family}: time / bare GEMMs", xlabel="tokens N", ylabel="x bare GEMMs", xscale="log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for method in ("gemm4", "gro_chunked", "gro_triton"):
        pts = sorted((r["H"], r["seconds"]) for r in ok if r["family"] == "crossover" and r["method"] == method)
        if pts:
            axes[2].plot(*zip(*pts), marker="o", label=method)
    axes[2].set(title="H sweep: fwd+bwd seconds", xlabel="hidden size H", ylabel="seconds")
    axes[2].grid(True, alpha=0.3)
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(report.out, "gpu_check.png"), dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- subprocesses
def run_streamed(cmd, env, timeout_s, log_path, report, prefix):
    """Run cmd, echoing its output as progress and into log_path; kill its process group at the timeout.
    Returns (returncode or None when timed out, output lines, seconds)."""
    begin = time.monotonic()
    lines = []
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", start_new_session=True)

        def pump():
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                log.write(line)
                log.flush()
                print(f"  {prefix}| {line.rstrip()[:200]}", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            reader.join(timeout=5)
            return None, lines, time.monotonic() - begin
        except Interrupted:
            _kill_group(proc)
            raise
        reader.join(timeout=5)
    return proc.returncode, lines, time.monotonic() - begin


def _kill_group(proc):
    """End the child and everything it started (its own session), politely first."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _clean_env(**extra):
    """The environment for the child steps: library switches unset (the checks name backends explicitly)."""
    env = {k: v for k, v in os.environ.items() if k not in ("GRO_BACKEND", "GRO_CHUNK_SIZE", "GRO_DISABLE_NATIVE",
                                                              "TRITON_INTERPRET", "GRO_TEST_DEVICE")}
    env.update(extra)
    return env


# ----------------------------------------------------------------------------------------- step 0: build
def nvcc_release(home):
    """"13.0" from `nvcc --version` of the toolkit at home, or None."""
    try:
        out = subprocess.run([os.path.join(home, "bin", "nvcc"), "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"release (\d+\.\d+)", out)
    return found.group(1) if found else None


def cuda_home():
    """(toolkit, its nvcc release) to build with: of $CUDA_HOME, the nvcc on PATH, /usr/local/cuda and
    /usr/local/cuda-*, the first whose major version is torch's CUDA major (torch's cpp_extension refuses a
    major mismatch), else the first found. (None, None) when there is no nvcc."""
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc
                  else None, "/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    found = []
    for home in dict.fromkeys(c for c in candidates if c):
        # Headers too: a wrapper script on PATH (e.g. /usr/local/bin/nvcc) does not make /usr/local a toolkit.
        if all(os.path.isfile(os.path.join(home, *p)) for p in (("bin", "nvcc"), ("include", "cuda_runtime.h"))):
            found.append((home, nvcc_release(home)))
    wanted = (torch.version.cuda or "").split(".")[0]
    for home, release in found:
        if release and release.split(".")[0] == wanted:
            return home, release
    return found[0] if found else (None, None)


def step_build(report: Report):
    if report.plan.dry:
        report.verdict("build", "SKIP", "dry run: no build, the extension already built in this tree is used")
        return
    major, minor = torch.cuda.get_device_capability(0)
    arch, (home, release) = f"{major}.{minor}", cuda_home()
    if home is None:
        report.verdict("build", "FAIL", "no nvcc found ($CUDA_HOME/bin, PATH, /usr/local/cuda*)")
        return
    report.env.update(cuda_home=home, nvcc=release, torch_cuda_arch_list=arch)
    if release and torch.version.cuda and release.split(".")[0] != torch.version.cuda.split(".")[0]:
        report.note(f"nvcc {release} and torch's CUDA {torch.version.cuda} differ in major version: torch's "
                    f"cpp_extension may refuse to build (then chunked runs its torch epilogue)")
    # GRO_SKIP_*: this step exists to build the CUDA kernels, whatever the shell had set.
    env = _clean_env(CUDA_HOME=home, TORCH_CUDA_ARCH_LIST=arch, MAX_JOBS=str(os.cpu_count() or 4),
                     PATH=os.path.join(home, "bin") + os.pathsep + os.environ.get("PATH", ""))
    for var in ("GRO_SKIP_CUDA_BUILD", "GRO_SKIP_NATIVE_BUILD"):
        env.pop(var, None)
    timeout = min(BUILD_CAP_S, report.left() - RESERVE_S - 60)  # leave a minute for the rest at least
    report.log(f"build: setup.py build_ext --inplace for sm_{major}{minor} with {home} (timeout {timeout:.0f} s)")
    cmd = [sys.executable, "setup.py", "build_ext", "--inplace", "-q"]
    rc, lines, seconds = run_streamed(cmd, env, timeout, os.path.join(report.out, "build.log"), report, "build")
    report.env["build_seconds"] = round(seconds, 1)
    if rc == 0:
        report.verdict("build", "PASS", f"built in {seconds:.0f} s for sm_{major}{minor} (nvcc {release}, {home})")
    elif rc is None:
        report.verdict("build", "FAIL", f"timed out after {seconds:.0f} s (build.log)")
    else:
        report.verdict("build", "FAIL", f"rc {rc} after {seconds:.0f} s: {_first_error(lines)} (build.log)")


def _first_error(lines):
    """The line that says why a build failed: the first with 'error', else the last line."""
    for line in lines:
        if re.search(r"\berror\b", line, re.IGNORECASE):
            return line.strip()[:300]
    return (lines[-1].strip() if lines else "no output")[:300]


def step_extension(report: Report, device_type: str):
    """The compiled epilogue for the device is loaded (imports gro_kernels: after the build, on purpose)."""
    import gro_kernels
    from gro_kernels import _ext

    report.env.update(gro_kernels=gro_kernels.__file__, native=_ext.native_status())
    if _ext.native_available(device_type):
        report.verdict("extension", "PASS", _ext.native_status())
    elif report.plan.dry:
        report.verdict("extension", "SKIP", f"dry run, no CPU extension built here: {_ext.native_status()}")
    else:
        report.verdict("extension", "FAIL", f"no native {device_type} epilogue (chunked runs its torch epilogue): "
                                            f"{_ext.native_status()}")


# ---------------------------------------------------------------------------------- step 1: device tests
COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")
PROGRESS = re.compile(r"^([.FEsxX]+)\s*(\[\s*\d+%\])?$")


def parse_pytest_counts(lines, finished: bool) -> dict:
    """Counts from pytest -q's last summary line; for a run cut short, from its progress characters."""
    if finished:
        for line in reversed(lines):
            found = COUNT.findall(line)
            if found and " in " in line:
                return {("errors" if kind.startswith("error") else kind): int(n) for n, kind in found}
    marks = "".join(m.group(1) for m in map(PROGRESS.match, lines) if m)
    return {k: marks.count(c) for k, c in (("passed", "."), ("failed", "F"), ("errors", "E"), ("skipped", "s"))}


def step_device_tests(report: Report, device_type: str):
    timeout = min(TESTS_CAP_S, report.left() - RESERVE_S - 45)
    if timeout < 20:
        report.verdict("device-tests", "SKIP", f"budget: {report.left():.0f} s left")
        return
    env = _clean_env(GRO_TEST_DEVICE=device_type)
    cmd = [sys.executable, "-m", "pytest", "tests/device", "-q", "-p", "no:cacheprovider", "-rfE"]
    report.log(f"device tests: GRO_TEST_DEVICE={device_type} pytest tests/device (timeout {timeout:.0f} s)")
    rc, lines, seconds = run_streamed(cmd, env, timeout, os.path.join(report.out, "device_tests.log"), report, "tests")
    counts = parse_pytest_counts(lines, finished=rc is not None)
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "nothing ran"
    failing = [line.split(" - ")[0] for line in lines if line.startswith(("FAILED ", "ERROR "))][:3]
    report.env["device_tests"] = dict(counts, seconds=round(seconds, 1), rc=rc)
    if rc is None:
        report.verdict("device-tests", "FAIL", f"timed out after {seconds:.0f} s; so far {summary}")
    elif rc == 0 and counts.get("passed", 0) > 0:
        report.verdict("device-tests", "PASS", f"{summary} in {seconds:.0f} s (GRO_TEST_DEVICE={device_type})")
    else:
        report.verdict("device-tests", "FAIL", f"rc {rc}: {summary}; {'; '.join(failing)} (device_tests.log)")


# ------------------------------------------------------------------------------------- measurement probes
class CudaProbe:
    """CUDA events for time, the allocator's high-water mark for memory."""

    kind = "cuda"

    def __init__(self):
        self.device = torch.device("cuda")

    def time(self, step, repeats, warmup):
        for _ in range(warmup):
            step()
        torch.cuda.synchronize()
        samples = []
        for _ in range(repeats):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            step()
            end.record()
            end.synchronize()
            samples.append(begin.elapsed_time(end) / 1e3)
        return statistics.median(samples)

    def memory(self, step, reset, exclude_bytes):
        """(peak MiB allocated, MiB above what was allocated before the step, minus exclude_bytes)."""
        reset()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return peak / MIB, max(0, peak - base - exclude_bytes) / MIB

    def free_bytes(self):
        return torch.cuda.mem_get_info()[0]

    def release(self):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


class CpuProbe:
    """time.perf_counter for time, the RSS high-water mark (VmHWM after clear_refs) for memory."""

    kind = "cpu"

    def __init__(self):
        self.device = torch.device("cpu")

    def time(self, step, repeats, warmup):
        for _ in range(warmup):
            step()
        samples = []
        for _ in range(repeats):
            begin = time.perf_counter()
            step()
            samples.append(time.perf_counter() - begin)
        return statistics.median(samples)

    def memory(self, step, reset, exclude_bytes):
        extra = common.measure_extra_memory(step, reset, exclude_bytes)
        return common.rss_high_water_bytes() / MIB, extra / MIB

    def free_bytes(self):
        return 0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    def release(self):
        pass


# ---------------------------------------------------------------------------------------------- inputs
def make_weight(v, h, plan, device, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    return (torch.randn(v, h, generator=g, device=device, dtype=plan.dtype) / h ** 0.5).requires_grad_()


def make_batch(n, weight, plan, device, seed=1):
    """Leaf hidden [B, T, H], targets / mask / old / ref [B, T], advantages [B], a random upstream gradient."""
    import gro_kernels

    v, h = weight.shape
    t = min(plan.seq_len, n)
    b = n // t
    g = torch.Generator(device=device).manual_seed(seed)
    hidden = (torch.randn(b, t, h, generator=g, device=device, dtype=plan.dtype) * 0.5).requires_grad_()
    targets = torch.randint(0, v, (b, t), generator=g, device=device)
    lengths = torch.randint(int(0.8 * t), t + 1, (b,), generator=g, device=device)
    mask = torch.arange(t, device=device).unsqueeze(0) < lengths.unsqueeze(1)
    current = gro_kernels.linear_logprobs_no_grad(hidden, weight, targets, backend="chunked")
    noise = lambda s: s * torch.randn(b, t, generator=g, device=device)  # noqa: E731
    return dict(hidden=hidden, weight=weight, targets=targets, mask=mask, old=current + noise(0.15),
                ref=current + noise(0.1), adv=torch.randn(b, generator=g, device=device),
                upstream=torch.randn(b, t, generator=g, device=device))


def gemm_flops(n, h, v, count):
    return count * 2.0 * n * h * v


# ------------------------------------------------------------------------------------------------ methods
def dapo_token_loss(logprobs, x):
    """The dapo objective on per-token logprobs, plainly (docs/math.md §3): clip [1-0.2, 1+0.28] + 0.04 k3,
    token mean over the mask. The naive path and the TRL peer use it."""
    ratio = torch.exp(torch.clamp(logprobs - x["old"], -20, 20))
    adv = x["adv"].unsqueeze(1)
    surrogate = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - EPS_LOW, 1 + EPS_HIGH) * adv)
    d = x["ref"] - logprobs
    m = x["mask"].float()
    return ((surrogate + BETA * (torch.exp(d) - d - 1)) * m).sum() / m.sum().clamp(min=1)


def _gro_loss(x, backend, grad_in_forward=None):
    import gro_kernels

    return gro_kernels.gro_loss(x["hidden"], x["weight"], x["targets"], preset="dapo", mask=x["mask"],
                                advantages=x["adv"], old_logprobs=x["old"], ref_logprobs=x["ref"], beta=BETA,
                                backend=backend, grad_in_forward=grad_in_forward).loss


def _naive_logprobs(x):
    import gro_kernels

    return gro_kernels.linear_logprobs(x["hidden"], x["weight"], x["targets"], backend="naive")


def _backward_step(x, forward):
    """A fwd+bwd step: forward(x) -> (output, gradient to feed it, or None for a scalar loss)."""
    def step():
        x["hidden"].grad, x["weight"].grad = None, None
        out, grad = forward(x)
        torch.autograd.backward(out, grad)
    return step


def lp_forward(backend):
    import gro_kernels

    return lambda x: (gro_kernels.linear_logprobs(x["hidden"], x["weight"], x["targets"], backend=backend),
                      x["upstream"])


def method_table(family, plan, probe, peers):
    """name -> (units of the bare GEMMs it is expected to cost, factory(x) -> step, note)."""
    gemms = 4 if family == "linear_logprobs" else 3
    table = {f"gemm{gemms}": (gemms / 4, lambda x: common.bare_gemms(x, gemms),
                              f"{gemms} bare GEMMs, outputs preallocated")}
    triton = probe.kind == "cuda"
    for backend in ("chunked", "triton", "auto"):
        if backend == "triton" and not triton:
            continue
        units = 4.0 if backend == "triton" else 1.3
        if family == "linear_logprobs":
            table[f"gro_{backend}"] = (units, lambda x, b=backend: _backward_step(x, lp_forward(b)), "")
        else:
            table[f"gro_{backend}"] = (units, lambda x, b=backend: _backward_step(x, lambda y: (_gro_loss(y, b), None)),
                                       "")
    if family == "grpo_loss":
        plain = lambda y: (_gro_loss(y, "chunked", False), None)  # noqa: E731
        table["gro_chunked_plain"] = (1.4, lambda x: _backward_step(x, plain), "grad_in_forward=False (4 GEMMs)")
        table["naive"] = (2.0, lambda x: _backward_step(x, lambda y: (dapo_token_loss(_naive_logprobs(y), y), None)),
                          "materialized logits")
    else:
        table["naive"] = (2.0, lambda x: _backward_step(x, lambda y: (_naive_logprobs(y), y["upstream"])),
                          "materialized logits")
    for name, (units, factory, note) in peers.get(family, {}).items():
        table[name] = (units, factory, note)
    return table


def memory_estimate(name, n, v, plan):
    """Bytes a method holds beyond its inputs, for the guard (naive: 32 B per logit, above its ~28, see the doc)."""
    per = 4 if plan.dtype == torch.float32 else 2
    if name == "naive":
        return 32 * n * v
    if name.startswith("gemm"):
        return per * n * v
    return 0


# -------------------------------------------------------------------------------------------------- peers
def find_peers(report, probe):
    """family -> {name: (units, factory, note)} for the peers that import and run here; notes for the rest."""
    peers = {"linear_logprobs": {}, "grpo_loss": {}}
    ran, skipped = [], []
    for family, name, build, note in _peer_candidates():
        try:
            if probe.kind != "cuda" and name != "torch_chunked_ce":
                raise RuntimeError("needs a GPU (Triton kernels); skipped in the dry run")
            forward = build()
            _probe_peer(forward, family, probe.device)
        except Exception as exc:  # noqa: BLE001 - an absent or failing peer is a note, not a failure
            skipped.append(f"{name} ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})")
            continue
        peers[family][name] = (1.5, lambda x, f=forward: _backward_step(x, f), note)
        ran.append(name)
    for item in skipped:
        report.note(f"peer skipped: {item}")
    return peers, ran, skipped


def _peer_candidates():
    """(family, name, build() -> forward(x) -> (output, grad), note). Imports happen inside build()."""
    def torch_ce():
        fn = torch.nn.functional.linear_cross_entropy  # AttributeError on torch < 2.13
        options = torch.nn.LinearCrossEntropyOptions() if hasattr(torch.nn, "LinearCrossEntropyOptions") else None
        kw = {} if options is None else dict(options=options)
        return lambda x: (fn(_flat(x["hidden"]), x["weight"], x["targets"].reshape(-1), **kw), None)

    def trl_logprobs():
        try:
            from trl.kernels.chunked_logprob import ChunkedLogProbFunction
        except ImportError:
            from trl.kernels import ChunkedLogProbFunction
        return lambda x: (ChunkedLogProbFunction.apply(_flat(x["hidden"]), x["weight"], None,
                                                       x["targets"].reshape(-1), 1.0)[0], x["upstream"].reshape(-1))

    def trl_loss():
        logprobs = trl_logprobs()
        return lambda x: (dapo_token_loss(logprobs(x)[0].reshape(x["targets"].shape), x), None)

    def liger_ce():
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        loss = LigerFusedLinearCrossEntropyLoss()
        return lambda x: (loss(x["weight"], _flat(x["hidden"]), x["targets"].reshape(-1)), None)

    def liger_grpo():
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

        module = LigerFusedLinearGRPOLoss(beta=BETA, compiled=False, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH,
                                          loss_type="dapo")
        return lambda x: (_first(module(x["hidden"], x["weight"], x["targets"], x["mask"].long(), x["adv"],
                                        ref_per_token_logps=x["ref"], old_per_token_logps=x["old"])), None)

    ce_note = "mean cross-entropy: may fold its gradient into the forward (3 GEMMs)"
    return [("linear_logprobs", "torch_chunked_ce", torch_ce, "torch F.linear_cross_entropy, " + ce_note),
            ("linear_logprobs", "trl_chunked_logprob", trl_logprobs, "trl.kernels ChunkedLogProbFunction"),
            ("linear_logprobs", "liger_flce", liger_ce, "LigerFusedLinearCrossEntropyLoss, " + ce_note),
            ("grpo_loss", "trl_logprob+loss", trl_loss, "TRL logprobs + the dapo loss in torch"),
            ("grpo_loss", "liger_grpo", liger_grpo, "LigerFusedLinearGRPOLoss loss_type=dapo, eager")]


def _flat(hidden):
    return hidden.reshape(-1, hidden.shape[-1])


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _probe_peer(forward, family, device):
    """Run the peer once on tiny inputs of the benchmark's layout, so a broken peer is a note, not a crash."""
    g = torch.Generator(device=device).manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    b, t, h, v = 2, 8, 16, 64
    x = dict(hidden=torch.randn(b, t, h, generator=g, device=device, dtype=dtype).requires_grad_(),
             weight=torch.randn(v, h, generator=g, device=device, dtype=dtype).requires_grad_(),
             targets=torch.randint(0, v, (b, t), generator=g, device=device),
             mask=torch.ones(b, t, dtype=torch.bool, device=device), adv=torch.randn(b, device=device),
             old=-torch.rand(b, t, device=device) - 3, ref=-torch.rand(b, t, device=device) - 3,
             upstream=torch.randn(b, t, device=device))
    _backward_step(x, forward)()


# ------------------------------------------------------------------------------------------- measuring
def measure(report, probe, family, model, x, name, spec, extra=None):
    """Time and memory of one method on one shape: one row, written at once. Returns the row."""
    plan = report.plan
    units, factory, note = spec
    b, t, h = x["hidden"].shape
    n, v = b * t, x["weight"].shape[0]
    gemms = 4 if family != "grpo_loss" else 3
    row = dict(family=family, model=model, N=n, H=h, V=v, dtype=str(plan.dtype).replace("torch.", ""),
               method=name, backend=_resolved(name, probe, h), note=note, **(extra or {}))
    calls = plan.warmup + plan.repeats + (2 if probe.kind == "cpu" else 1)
    estimate = units * gemm_flops(n, h, v, 4) / plan.flops_per_s * calls + 1.0
    if "triton" in row["backend"] and not report.triton_warm:
        estimate += plan.triton_jit_s
    need = memory_estimate(name, n, v, plan)
    if not report.fits(estimate):
        report.budget_skips += 1
        return _skip(report, row, f"budget: needs ~{estimate:.0f} s, {report.left() - RESERVE_S:.0f} s left")
    if need > 0.9 * probe.free_bytes():
        return _skip(report, row, f"memory: needs ~{need / GIB:.0f} GiB, {probe.free_bytes() / GIB:.0f} GiB free")
    step = None
    try:
        step = factory(x)
        seconds = probe.time(step, plan.repeats, plan.warmup)
        grad_bytes = sum(p.numel() * p.element_size() for p in (x["hidden"], x["weight"]))

        def drop_grads():
            x["hidden"].grad, x["weight"].grad = None, None

        peak, extra_mib = probe.memory(step, drop_grads, 0 if name.startswith("gemm") else grad_bytes)
    except Exception as exc:  # noqa: BLE001 - one failing method is a row and a note, the run goes on
        row.update(status="error", note=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
        report.log(f"{family} {model} N {n} {name}: ERROR {row['note']}")
        report.add_row(row)
        return row
    finally:
        del step
        x["hidden"].grad, x["weight"].grad = None, None
        probe.release()
    if "triton" in row["backend"]:
        report.triton_warm = True
    row.update(seconds=seconds, useful_tflops=gemm_flops(n, h, v, gemms) / seconds / 1e12, peak_mib=peak,
               extra_mib=extra_mib, status="ok")
    report.log(f"{family} {model} N {n} H {h} {name}: {seconds:.4f} s, {row['useful_tflops']:.3g} useful TFLOP/s, "
               f"peak {peak:.0f} MiB, extra {extra_mib:.0f} MiB")
    report.add_row(row)
    return row


def _skip(report, row, why):
    row.update(status="skipped", note=why)
    report.log(f"{row['family']} {row['model']} N {row['N']} {row['method']}: skipped ({why})")
    report.add_row(row)
    return row


def _resolved(name, probe, h):
    import gro_kernels

    if name.startswith("gro_"):
        backend = name.split("_")[1]
        return gro_kernels.selected_backend(probe.device, backend, hidden_size=h)
    return {"naive": "naive"}.get(name, "")


def add_ratios(rows, baseline):
    base = next((r for r in rows if r["method"] == baseline and r.get("seconds")), None)
    for row in rows:
        if base is not None and row.get("seconds"):
            row["x_gemms"] = row["seconds"] / base["seconds"]


def bench_point(report, probe, model, n, weight, peers):
    """Both families at one (model, N): the loss check, then every method, round by round."""
    plan = report.plan
    x = make_batch(n, weight, plan, probe.device)
    for family in ("linear_logprobs", "grpo_loss"):
        table = method_table(family, plan, probe, peers)
        diffs = loss_check(x, probe) if family == "grpo_loss" else {}
        rows = [measure(report, probe, family, model, x, name, spec, dict(loss_rel_diff=diffs.get(name)))
                for name, spec in table.items()]
        add_ratios(rows, "gemm4" if family == "linear_logprobs" else "gemm3")
        report.write()
    del x
    probe.release()


def loss_check(x, probe):
    """Relative difference of each gro loss to the naive loss on the first sequence (fp32 naive reference)."""
    with torch.no_grad():
        one = {k: (v[:1] if v.dim() >= 1 and k != "weight" else v) for k, v in x.items()}
        ref32 = dict(one, hidden=one["hidden"].float(), weight=one["weight"].float())
        reference = dapo_token_loss(_naive_logprobs(ref32), ref32).item()
        backends = ("chunked", "triton", "auto") if probe.kind == "cuda" else ("chunked", "auto")
        diffs = {f"gro_{b}": _gro_loss(one, b).item() for b in backends}
        diffs["gro_chunked_plain"] = _gro_loss(one, "chunked", False).item()
        diffs["naive"] = dapo_token_loss(_naive_logprobs(one), one).item()
    return {k: abs(v - reference) / max(abs(reference), 1e-6) for k, v in diffs.items()}


def correctness_check(report, probe, weights):
    """Logprobs of each gro backend on 512 tokens of each real head vs an fp32 naive reference, under the rule
    of docs/testing.md: error <= 2x the naive op's error in the same dtype + 1e-3."""
    import gro_kernels

    backends = ("chunked", "triton", "auto") if probe.kind == "cuda" else ("chunked", "auto")
    if not report.fits(5.0 + report.plan.triton_jit_s):
        report.verdict("correctness", "SKIP", f"budget: {report.left():.0f} s left")
        return
    worst, failures = {}, []
    for model, weight in weights.items():
        x = make_batch(min(512, report.plan.ns[0]), weight, report.plan, probe.device, seed=7)
        with torch.no_grad():
            h, w, t = x["hidden"], x["weight"], x["targets"]
            reference = gro_kernels.linear_logprobs(h.float(), w.float(), t, backend="naive")
            naive_err = (gro_kernels.linear_logprobs(h, w, t, backend="naive") - reference).abs().max().item()
            for backend in backends:
                e = (gro_kernels.linear_logprobs(h, w, t, backend=backend) - reference).abs().max().item()
                worst[f"{model}/{backend}"] = e
                if not e <= 2 * naive_err + 1e-3:
                    failures.append(f"{model}/{backend} err {e:.1e} > 2x naive {naive_err:.1e} + 1e-3")
    summary = ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
    if failures:
        report.verdict("correctness", "FAIL", "; ".join(failures))
    else:
        report.verdict("correctness", "PASS", f"logprob max error vs fp32 naive (<= 2x naive's own + 1e-3): {summary}")


# -------------------------------------------------------------------------------------------- crossover
def run_sweep(report, probe):
    plan, s = report.plan, report.plan.sweep
    methods = {"gemm4": None, "gro_chunked": None, "gro_triton": None}
    table = method_table("linear_logprobs", plan, probe, {})
    for h in s["hs"]:
        weight = make_weight(s["v"], h, plan, probe.device, seed=h)
        x = make_batch(s["n"], weight, plan, probe.device)
        rows = [measure(report, probe, "crossover", f"H{h}", x, name, table[name]) for name in methods if name in table]
        add_ratios(rows, "gemm4")
        report.write()
        del x, weight
        probe.release()


def crossover_summary(rows) -> dict:
    """Which backend is faster at each swept H, where it flips, and the CHUNKED_MIN_HIDDEN_CUDA it suggests.

    rows: crossover rows (H, method, seconds). Returns dict(points=[(H, triton/chunked)], flip_h, recommend,
    text). The `auto` rule is "chunked for H >= threshold", so the threshold is the first measured H from
    which chunked stays faster; the flip is interpolated where log(triton/chunked) crosses 0."""
    from gro_kernels.ops.linear_logprobs.function import CHUNKED_MIN_HIDDEN_CUDA as current

    times = {}
    for r in rows:
        if r.get("seconds") and r["method"] in ("gro_chunked", "gro_triton"):
            times.setdefault(r["H"], {})[r["method"]] = r["seconds"]
    points = [(h, t["gro_triton"] / t["gro_chunked"]) for h, t in sorted(times.items()) if len(t) == 2]
    if not points:
        return dict(points=[], flip_h=None, recommend=None,
                    text=f"No Triton/chunked pair measured: no crossover (auto rule unchanged at {current}).")
    chunked_from = next((i for i in range(len(points)) if all(q > 1 for _, q in points[i:])), None)
    flip_h, recommend = None, None
    if chunked_from == 0:
        recommend = points[0][0]
        verdict = f"chunked is faster at every measured H ({points[0][0]}..{points[-1][0]})"
    elif chunked_from is None:
        verdict = f"Triton is faster at the largest measured H ({points[-1][0]}): no threshold in range"
    else:
        (h0, q0), (h1, q1) = points[chunked_from - 1], points[chunked_from]
        flip_h = h0 + (h1 - h0) * (0 - math.log(q0)) / (math.log(q1) - math.log(q0)) if q0 != q1 else h1
        recommend = h1
        verdict = f"Triton is faster below H ~{flip_h:.0f}, chunked from H = {h1} up"
    if any(q > 1 for _, q in (points if chunked_from is None else points[:chunked_from])):
        verdict += " (not monotonic: chunked also wins at some smaller H)"
    advice = (f"recommend CHUNKED_MIN_HIDDEN_CUDA = {recommend}" if recommend is not None else
              f"recommend CHUNKED_MIN_HIDDEN_CUDA > {points[-1][0]} (measure larger H)")
    ratios = ", ".join(f"H {h}: triton/chunked {q:.2f}" for h, q in points)
    text = f"{verdict}; {advice} (now {current}; not changed by this script). {ratios}."
    return dict(points=points, flip_h=flip_h, recommend=recommend, text=text)


# --------------------------------------------------------------------------------------------------- run
def family_verdict(report, family, baseline):
    rows = [r for r in report.rows if r["family"] == family]
    ours = [r for r in rows if r["method"].startswith("gro_")]
    errors = [f"{r['model']}/N{r['N']}/{r['method']}: {r['note']}" for r in ours if r["status"] == "error"]
    errors += _loss_mismatches(rows)
    done = [r for r in ours if r["status"] == "ok"]
    if errors:
        report.verdict(family, "FAIL", "; ".join(errors[:3]))
    elif not done:
        report.verdict(family, "SKIP", "no gro measurement ran (budget or memory; see notes)")
    else:
        best = max(done, key=lambda r: (r["N"], r["method"] == "gro_auto"))
        ratio = _fmt(best.get("x_gemms"), ".2f")
        report.verdict(family, "PASS", f"{len(done)} gro measurements; at {best['model']} N {best['N']} "
                       f"{best['method']} ({best['backend']}) {best['seconds']:.3f} s = {ratio}x the {baseline} bare "
                       f"GEMMs, peak {best['peak_mib'] / 1024:.1f} GiB")


def _loss_mismatches(rows):
    """gro losses further from the fp32 reference than 2x the naive loss in the same dtype + 1e-3 (relative)."""
    naive = {(r["model"], r["N"]): r.get("loss_rel_diff") for r in rows if r["method"] == "naive"}
    bad = []
    for r in rows:
        allowed = naive.get((r["model"], r["N"]))
        if r["method"].startswith("gro_") and r.get("loss_rel_diff") is not None and allowed is not None \
                and r["loss_rel_diff"] > 2 * allowed + 1e-3:
            bad.append(f"{r['model']}/N{r['N']}/{r['method']}: loss rel diff {r['loss_rel_diff']:.1e} > 2x naive "
                       f"{allowed:.1e} + 1e-3")
    return bad


def step_benchmarks(report, probe):
    plan = report.plan
    peers, ran, skipped = find_peers(report, probe)
    if ran:
        report.verdict("peers", "PASS", f"ran {', '.join(ran)}; skipped {len(skipped)} (notes)")
    else:
        report.verdict("peers", "SKIP", f"none importable and runnable here; skipped: {'; '.join(skipped)}")
    weights = {model: make_weight(v, h, plan, probe.device, seed=i) for i, (model, (h, v)) in
               enumerate(plan.models.items())}
    correctness_check(report, probe, weights)
    for model, n in plan.points():
        if model == "sweep":
            run_sweep(report, probe)
            continue
        h, v = plan.models[model]
        report.log(f"benchmarks: {model} (H {h}, V {v}) N {n}, {report.left():.0f} s left")
        bench_point(report, probe, model, n, weights[model], peers)
    family_verdict(report, "linear_logprobs", 4)
    family_verdict(report, "grpo_loss", 3)
    sweep_verdict(report, probe)


def sweep_verdict(report, probe):
    from gro_kernels import _ext

    if probe.kind != "cuda":
        report.verdict("crossover", "SKIP", "dry run: Triton needs a GPU, so there is no crossover to measure")
        return
    analysis = crossover_summary([r for r in report.rows if r["family"] == "crossover"])
    if not _ext.native_available("cuda"):
        # The rule only chooses between Triton and chunked *with* the CUDA epilogue.
        report.verdict("crossover", "SKIP", f"chunked ran its torch epilogue (no native CUDA build), so this is "
                                            f"not the crossover the auto rule needs: {analysis['text']}")
        return
    report.verdict("crossover", "PASS" if analysis["points"] else "SKIP", analysis["text"])


def step_device(report) -> "CudaProbe | CpuProbe | None":
    if report.plan.dry:
        report.verdict("device", "SKIP", "dry run: CPU tensors, tiny shapes, fp32")
        return CpuProbe()
    if not torch.cuda.is_available():
        report.verdict("device", "FAIL", "no CUDA device (torch.cuda.is_available() is False); "
                                         "GRO_GPU_CHECK_DRY=1 runs the CPU dry run")
        return None
    props = torch.cuda.get_device_properties(0)
    report.env.update(cuda_device=props.name, capability=f"{props.major}.{props.minor}",
                      memory_gib=round(props.total_memory / GIB, 1), torch_cuda=torch.version.cuda)
    report.verdict("device", "PASS", f"{props.name}, sm_{props.major}{props.minor}, "
                                     f"{props.total_memory / GIB:.0f} GiB, torch {torch.__version__} "
                                     f"(CUDA {torch.version.cuda})")
    return CudaProbe()


def _on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


def main():
    plan = Plan(DRY)
    report = Report(OUT, plan)
    for var in ("GRO_BACKEND", "GRO_CHUNK_SIZE", "GRO_DISABLE_NATIVE"):
        if os.environ.pop(var, None) is not None:
            report.note(f"{var} was set; unset for this run (every method names its backend)")
    report.env.update(mode="dry" if DRY else "cuda", budget_s=BUDGET_S, python=sys.version.split()[0],
                      torch=torch.__version__, cores=os.cpu_count())
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    report.log(f"gpu-check ({'dry run' if DRY else 'CUDA'}): budget {BUDGET_S:.0f} s, results in {OUT}")
    status = 0
    try:
        probe = step_device(report)
        if probe is None:
            status = 2
        else:
            step_build(report)
            step_extension(report, probe.kind)
            report.env.update(common.environment())
            step_device_tests(report, probe.kind)
            step_benchmarks(report, probe)
            report.verdict("budget", "PASS" if not report.budget_skips else "SKIP",
                           f"{report.elapsed():.0f} s of {BUDGET_S:.0f} s" +
                           (f"; {report.budget_skips} measurements skipped to stay inside it"
                            if report.budget_skips else "; nothing skipped for time"))
    except Interrupted as exc:
        report.note(f"interrupted ({exc}) at {report.elapsed():.0f} s: results so far are kept")
        status = 3
    finally:
        report.write()
        try:
            write_plot(report)
        except Exception as exc:  # noqa: BLE001 - a plot must not lose the verdicts
            report.note(f"plot failed: {exc}")
            report.write()
    print("\n" + report.verdict_text(), flush=True)
    print(f"results: {OUT} ({report.elapsed():.0f} s)", flush=True)
    failed = any(s == "FAIL" for s, _ in report.verdicts.values())
    return status or (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
