"""bench/memory.py on a GPU: a configuration that runs out of memory is reported as such and the
ones after it still run (that is how the table finds the largest batch that fits). The GPU is
simulated: ``measure`` is replaced, so this runs on CPU."""
import importlib.util
import os

import pytest
import torch


def load_bench(repo_root: str):
    spec = importlib.util.spec_from_file_location("bench_memory", os.path.join(repo_root, "bench", "memory.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_out_of_memory_is_a_row_and_later_configurations_run(repo_root, monkeypatch, capsys):
    bench = load_bench(repo_root)
    calls = []

    def fake_measure(batch, chunk, args, device):
        calls.append((batch, chunk))
        if chunk == 0 and batch > 100:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if chunk == 32 and batch == 256:  # near the limit cuBLAS fails to allocate its workspace
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
        return {"batch": batch, "chunk": chunk, "peak_bytes": batch * 2**20, "total_bytes": batch * 2**21,
                "views_per_s": 10.0}

    monkeypatch.setattr(bench, "measure", fake_measure)
    rows = bench.main(["--device", "cuda", "--batch-sizes", "64", "256", "512", "--chunk-size", "32",
                       "--plain-up-to", "256"])
    assert calls == [(64, 0), (64, 32), (256, 0), (256, 32), (512, 32)]
    assert [bool(r.get("oom")) for r in rows] == [False, False, True, True, False]
    table = capsys.readouterr().out
    assert "| 256 | off | out of memory | | |" in table
    assert "| 512 | 32 | 512 | 1024 | 10.0 |" in table


def test_other_errors_are_not_taken_for_out_of_memory(repo_root, monkeypatch):
    bench = load_bench(repo_root)

    def broken(batch, chunk, args, device):
        raise RuntimeError("Expected all tensors to be on the same device")

    monkeypatch.setattr(bench, "measure", broken)
    with pytest.raises(RuntimeError, match="same device"):
        bench.main(["--device", "cuda", "--batch-sizes", "64", "--chunk-size", "32"])
