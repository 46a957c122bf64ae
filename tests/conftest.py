import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
torch.set_num_threads(1)  # tiny tensors: one thread avoids OpenMP overhead and contention


@pytest.fixture
def repo_root() -> str:
    return ROOT
