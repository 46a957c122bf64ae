"""The one backend setup (utils/precision.configure_backends): what it sets on CUDA, and that every entry point
and every bench that computes calls it."""
from __future__ import annotations

import ast
import os

import torch

from utils import REPO_ROOT
from utils.precision import configure_backends


def test_cuda_setup_is_cudnn_benchmark_with_ieee_fp32(monkeypatch):
    """Setting the flags needs no GPU; fp32 stays fp32 (TF32 off), cuDNN picks its algorithms by timing them."""
    flags = ((torch.backends.cudnn, "benchmark"), (torch.backends.cuda.matmul, "allow_tf32"),
             (torch.backends.cudnn, "allow_tf32"))
    for module, name in flags:
        monkeypatch.setattr(module, name, name != "benchmark")  # the opposite of the setup; restored after
    configure_backends(torch.device("cpu"))  # the CPU: nothing
    assert [getattr(m, n) for m, n in flags] == [False, True, True]
    configure_backends(torch.device("cuda"))
    assert [getattr(m, n) for m, n in flags] == [True, False, False]


def _calls(path: str) -> set[str]:
    with open(os.path.join(REPO_ROOT, path)) as f:
        tree = ast.parse(f.read())
    return {n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", "")
            for n in ast.walk(tree) if isinstance(n, ast.Call)}


def test_every_entry_point_and_bench_calls_the_setup():
    """simclr.py itself; the evaluation scripts through evaluation/harness.setup; every bench that computes
    (bench/learning.py runs the scripts)."""
    assert "configure_backends" in _calls("simclr.py")
    assert "configure_backends" in _calls("evaluation/harness.py")
    for script in ("lbfgs_linear_clf.py", "gradient_linear_clf.py", "finetune.py"):
        assert "setup" in _calls(script), script
    benches = [f for f in sorted(os.listdir(os.path.join(REPO_ROOT, "bench"))) if f.endswith(".py")]
    assert [b for b in benches if "configure_backends" not in _calls(f"bench/{b}")] == ["learning.py"]
