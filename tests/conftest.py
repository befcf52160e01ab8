import os

import pytest
import torch

# Keep test runs reproducible and independent of the developer's environment.
for var in ("GRO_BACKEND", "GRO_CHUNK_SIZE", "GRO_DISABLE_NATIVE"):
    os.environ.pop(var, None)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
