import os
import sys
import tempfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ["SIMCLR_CACHE"] = tempfile.mkdtemp(prefix="simclr-test-cache-")  # keep the repo's .cache clean
torch.set_num_threads(1)  # tiny tensors: one thread avoids OpenMP overhead and contention


@pytest.fixture
def repo_root() -> str:
    return ROOT
