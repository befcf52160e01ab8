"""Shared benchmark plumbing: timing, per-process peak memory, environment record, CSV/plots.

Timing: methods run round-robin in one process (noise on a shared machine spreads evenly over them),
and each reports the median over repeats. Peak memory: each method runs in a fresh interpreter
(`python -m benchmarks.<module> --memory-probe ...`); the RSS high-water mark is reset through
/proc/self/clear_refs after inputs and the gradient outputs every method must allocate exist, and
"extra" is VmHWM minus the RSS at that point (docs/testing.md, Memory).
"""

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch


def rss_high_water_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def measure_extra_memory(step, reset=None, exclude_bytes: int = 0) -> int:
    """Peak bytes above the current RSS while `step()` runs, after one warm-up call.

    reset() runs between the warm-up and the measured call (e.g. drop the warm-up's .grad tensors);
    exclude_bytes is subtracted (e.g. the gradient outputs every method must allocate). gro-kernels' kept logit
    store is freed before the measured call, so that the call's peak counts it."""
    import gro_kernels

    step()
    if reset is not None:
        reset()
    gro_kernels.release_logit_store()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    base = rss_bytes()
    step()
    return max(0, rss_high_water_bytes() - base - exclude_bytes)


def time_round_robin(steps: dict, repeats: int, warmup: int = 1) -> dict:
    """Median seconds per call of each step, interleaving the methods on every repeat."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    samples = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def run_memory_probe(module: str, args: list, timeout: float = 1800) -> dict:
    """Run `python -m module --memory-probe args...` in a fresh process and parse its JSON line."""
    cmd = [sys.executable, "-m", module, "--memory-probe", *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def fits_in_memory(nbytes: float, fraction: float = 0.6) -> bool:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return nbytes < fraction * total


def environment() -> dict:
    import gro_kernels

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gro_kernels": gro_kernels.__version__,
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "native": gro_kernels.native_status(),
        "load_avg": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    for peer in ("liger_kernel", "cut_cross_entropy", "trl", "triton"):
        try:
            from importlib.metadata import version

            info[peer] = version(peer.replace("_", "-"))
        except Exception:  # noqa: BLE001 - an absent peer is recorded, not fatal
            info[peer] = None
    return info


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def bare_gemms(x, count):
    """The GEMMs any fused LM-head method must run (logits, their recompute when count is 4, dhidden, dweight)
    on x["hidden"], x["weight"], into preallocated outputs of the inputs' dtype and device."""
    h, w = x["hidden"].detach().reshape(-1, x["hidden"].shape[-1]), x["weight"].detach()
    z, dh, dw = h.new_empty(h.shape[0], w.shape[0]), torch.empty_like(h), torch.empty_like(w)

    def run():
        for _ in range(count - 2):
            torch.mm(h, w.t(), out=z)
        torch.mm(z, w, out=dh)
        torch.mm(z.t(), h, out=dw)
    return run


def progress(items, desc: str):
    """A tqdm bar (on stderr) over a long benchmark loop; plain iteration when tqdm is missing."""
    items = list(items)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, leave=False, dynamic_ncols=True)


def write_csv(path: str, rows: list):
    if not rows:
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def write_text(path: str, text: str):
    """Write a results file (creating its folder) and echo it to stdout."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    print(text)


def format_table(rows: list, columns: list) -> str:
    """A Markdown table of `rows` (dicts) restricted to `columns` (key, header, format)."""
    header = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    lines = [header, rule]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            cells.append("-" if value is None or value == "" else (fmt.format(value) if fmt else str(value)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


MB = 2**20
# The benchmarks' dtype names (--dtypes): bf16 inputs are the fp32 draws rounded, so rows compare like with like.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_dtypes(text: str) -> tuple:
    """A comma list of DTYPES names (an argparse type)."""
    items = tuple(item for item in text.split(",") if item)
    unknown = [item for item in items if item not in DTYPES]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"unknown dtypes {unknown}; choose from {list(DTYPES)}")
    return items
