"""utils/allocator.py: with the tuning, the memory of a freed large tensor stays in the process and
the next one reuses it without page faults; with glibc's defaults every new large tensor is mapped
afresh and zero-filled by the kernel page by page. Each case runs in a fresh process."""
import os
import platform
import subprocess
import sys

import pytest

CHILD = r"""
import os, resource, sys
sys.path.insert(0, sys.argv[1])
import torch
from utils.allocator import tune_cpu_allocator

assert not tune_cpu_allocator("cuda")  # a GPU run's process is left alone
tuned = tune_cpu_allocator()
for _ in range(20):  # the first tensors fault their pages in, either way, until the heap has room
    x = torch.ones(16, 2**20)  # 64 MiB, like a ResNet-18 activation at batch 256
    del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    x = torch.ones(16, 2**20)
    del x
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, flush=True)
os._exit(0)  # the result is out: skip the interpreter's teardown (a second with torch loaded)
"""
PAGES = 5 * 64 * 2**20 // 4096  # page faults of 5 tensors faulted in afresh (4 KiB pages)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize("setting", ["1", "0"])
def test_large_tensors_reuse_memory_only_when_tuned(setting, repo_root):
    env = dict(os.environ, SIMCLR_MALLOC_TUNING=setting)
    out = subprocess.run([sys.executable, "-c", CHILD, repo_root], capture_output=True, text=True, env=env,
                         timeout=120, check=True).stdout.split()
    tuned, faults = out[0] == "True", int(out[1])
    if setting == "1":
        assert tuned and faults < PAGES // 20
    else:  # glibc's defaults (transparent huge pages would make the count smaller, never near zero)
        assert not tuned and faults > PAGES // 20
