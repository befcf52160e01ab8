"""Bad input to linear_logprobs gets a clear error naming the argument and what was expected."""

import pytest
import torch

import gro_kernels
from tests.support.helpers import error_mentions, make_inputs

HIDDEN, WEIGHT, TARGETS, BIAS = make_inputs(6, 8, 20, bias=True)


def call(**overrides):
    args = dict(hidden=HIDDEN, weight=WEIGHT, targets=TARGETS, bias=None)
    options = {k: overrides.pop(k) for k in list(overrides) if k not in args}
    args.update(overrides)
    return gro_kernels.linear_logprobs(args["hidden"], args["weight"], args["targets"], args["bias"], **options)


@pytest.mark.parametrize("overrides, error, words", [
    pytest.param(dict(weight=torch.randn(20, 9)), ValueError, ["weight", "(20, 9)", "H = hidden.shape[-1] = 8"],
                 id="mismatched-H"),
    pytest.param(dict(targets=TARGETS[:5]), ValueError, ["targets", "(6,)", "(5,)"], id="targets-shape"),
    pytest.param(dict(targets=TARGETS.float()), TypeError, ["targets", "int64", "torch.float32"],
                 id="targets-float"),
    pytest.param(dict(targets=torch.full((6,), 20)), ValueError, ["targets", "[0, 20)", "row 0", "20"],
                 id="target-id-too-large"),
    pytest.param(dict(targets=torch.full((6,), -3)), ValueError, ["targets", "row 0", "-3"], id="target-negative"),
    pytest.param(dict(temperature=0.0), ValueError, ["temperature", "> 0"], id="temperature-zero"),
    pytest.param(dict(temperature=-1.0), ValueError, ["temperature"], id="temperature-negative"),
    pytest.param(dict(temperature=float("nan")), ValueError, ["temperature", "finite"], id="temperature-nan"),
    pytest.param(dict(temperature=float("inf")), ValueError, ["temperature", "finite"], id="temperature-inf"),
    pytest.param(dict(chunk_size=0), ValueError, ["chunk_size", "0"], id="chunk-zero"),
    pytest.param(dict(chunk_size=-4), ValueError, ["chunk_size", "-4"], id="chunk-negative"),
    pytest.param(dict(weight=WEIGHT.double()), TypeError, ["weight", "dtype", "torch.float64"], id="dtype-mismatch"),
    pytest.param(dict(weight=WEIGHT.to("meta")), ValueError, ["weight", "device", "meta"], id="device-mismatch"),
    pytest.param(dict(backend="cuda-magic"), ValueError, ["backend", "cuda-magic", "chunked"], id="unknown-backend"),
    pytest.param(dict(hidden=HIDDEN.int()), TypeError, ["hidden", "torch.int32"], id="hidden-int"),
    pytest.param(dict(hidden=HIDDEN[0]), ValueError, ["hidden", "[N, H]", "(8,)"], id="hidden-1d"),
    pytest.param(dict(bias=torch.randn(19)), ValueError, ["bias", "[20]", "(19,)"], id="bias-shape"),
    pytest.param(dict(hidden=HIDDEN.tolist()), TypeError, ["hidden", "list"], id="hidden-not-tensor"),
])
def test_clear_errors(overrides, error, words):
    with pytest.raises(error) as exc_info:
        call(**overrides)
    error_mentions(exc_info, *words)


def test_unknown_backend_in_env(monkeypatch):
    monkeypatch.setenv("GRO_BACKEND", "fastest")
    with pytest.raises(ValueError) as exc_info:
        call()
    error_mentions(exc_info, "GRO_BACKEND", "fastest")


def test_ignore_index_is_not_out_of_range():
    targets = TARGETS.clone()
    targets[2] = -100
    lp = call(targets=targets)
    assert lp[2] == 0


def test_native_op_rejects_out_of_range_ids_directly():
    """Even a direct torch.ops call cannot make the C++ epilogue read outside a row."""
    from gro_kernels import _ext

    if not _ext.native_available("cpu"):
        pytest.skip(_ext.native_status())
    z = torch.randn(3, 10)
    out = [torch.empty(3) for _ in range(3)]
    with pytest.raises(RuntimeError, match="outside"):
        torch.ops.gro_C.logprob_forward(z, torch.tensor([1, 10, 2]), 1.0, -100, out[0], out[1], out[2])
