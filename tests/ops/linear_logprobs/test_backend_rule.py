"""The documented rule by which backend="auto" picks triton or chunked (+ CUDA epilogue) on CUDA.

No GPU here: Triton's and the native epilogue's availability are patched, and the rule is read off
resolve_backend for a cuda device object (creating one needs no GPU).
"""

import pytest
import torch

from gro_kernels import _ext, selected_backend
from gro_kernels.ops.linear_logprobs import function

CUDA = torch.device("cuda")
BIG = function.CHUNKED_MIN_HIDDEN_CUDA


@pytest.fixture
def patch(monkeypatch):
    monkeypatch.delenv("GRO_BACKEND", raising=False)

    def apply(*, triton: bool, native: bool):
        monkeypatch.setattr(function, "triton_usable", lambda device: triton and device.type == "cuda")
        monkeypatch.setattr(_ext, "native_available", lambda device_type="cpu": native)

    return apply


RULE = [  # triton usable, native CUDA epilogue built, hidden size -> backend
    (False, True, BIG, "chunked"),
    (False, False, 896, "chunked"),
    (True, False, BIG, "triton"),
    (True, True, BIG - 1, "triton"),
    (True, True, BIG, "chunked"),
    (True, True, None, "triton"),
]


@pytest.mark.parametrize("triton,native,hidden,expected", RULE)
def test_auto_on_cuda(patch, triton, native, hidden, expected):
    patch(triton=triton, native=native)
    assert function.resolve_backend("auto", CUDA, hidden_size=hidden) == expected


def test_cpu_stays_chunked_and_env_overrides(patch, monkeypatch):
    patch(triton=True, native=True)
    assert function.resolve_backend("auto", torch.device("cpu"), hidden_size=BIG) == "chunked"
    monkeypatch.setenv("GRO_BACKEND", "triton")
    assert function.resolve_backend("auto", CUDA, hidden_size=BIG) == "triton"
    assert function.resolve_backend("chunked", CUDA, hidden_size=16) == "chunked"


def test_selected_backend_reports_cuda_epilogue(patch):
    patch(triton=True, native=True)
    assert selected_backend("cuda", hidden_size=BIG) == "chunked/native-cuda"
    assert selected_backend("cuda", hidden_size=896) == "triton"
