"""The benchmark plumbing on tiny shapes (no timing claims, no memory probes): every method gets a row per dtype,
with a time or a skip note, and the accuracy gates hold for bf16. Selected by `pytest -k bench`."""

import pytest

from benchmarks import bench_linear_logprobs, bench_losses, common

# Cut Cross-Entropy compiles on first use (tens of seconds on CPU); the others cover the plumbing.
METHODS = tuple(m for m in bench_linear_logprobs.METHODS if m != "cce")


def test_bench_linear_logprobs_rows_per_dtype():
    n, h, v = 48, 16, 300
    errors = {dt: bench_linear_logprobs.logprob_errors(n, h, v, dt, METHODS) for dt in common.DTYPES}
    rows = bench_linear_logprobs.bench_shape("tiny", n, h, v, METHODS, tuple(common.DTYPES), 1, False, errors)
    assert {(r["dtype"], r["mode"], r["method"]) for r in rows} == \
        {(dt, mode, m) for dt in common.DTYPES for mode in bench_linear_logprobs.MODES for m in METHODS}
    for row in rows:
        assert row["seconds"] is not None or row["note"].startswith("skipped"), row
    gro = [r for r in rows if r["method"] == "gro"]
    assert all(r["err"] <= bench_linear_logprobs.LOGPROB_TOLERANCE[r["dtype"]] for r in gro)
    assert all(r["vs_gemm"] > 0 for r in gro)


@pytest.mark.parametrize("suite", ["grpo", "dpo"])
@pytest.mark.parametrize("dtype", list(common.DTYPES))
def test_bench_losses_checks(suite, dtype):
    bench_losses.check_gradients(suite, dtype)
    x = bench_losses.make_inputs(suite, dict(B=2, T=32, H=16, V=200), dtype=dtype)
    want = bench_losses.reference_loss(suite, x)
    ours = "gro_fused" if suite == "grpo" else "gro"
    got = bench_losses._step(bench_losses.method_table(suite)[ours][1], x)
    assert abs(got - want) <= bench_losses.LOSS_RTOL * max(1.0, abs(want))


def test_bench_losses_head_option():
    assert bench_losses.parse_head("896x151936") == dict(H=896, V=151936)
    for bad in ("896", "0x10", "ax b"):
        with pytest.raises(Exception, match="--head"):
            bench_losses.parse_head(bad)
