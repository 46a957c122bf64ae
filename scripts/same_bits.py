"""Proof of a pure refactor: the same runs at a base commit and in this tree give the same bits.

    python scripts/same_bits.py --base 1a2b3c4            # the base's results are cached in --out

Runs, in a git worktree of ``--base`` and in this working tree, on the bundled CIFAR-10 sample (CPU, fp32, no
workers): a 2-epoch pretraining with the kNN monitor, the same with gradient caching (1 epoch), 2 gloo processes
under torchrun (1 epoch), and a fine-tuning of the first run's checkpoint. Compares the checkpoints' weights
byte for byte, the CSV logs' losses and kNN values as written, and the fine-tuned weights and top-1. Prints one
line per comparison and exits 1 on any difference. About 5 minutes per tree on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import csv
import os
import socket
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--dataset", "cifar10-sample", "--arch", "resnet18", "--batch-size", "100", "--warmup-epochs", "1",
          "--precision", "fp32", "--device", "cpu", "--num-workers", "0", "--proj-dim", "32", "--log-freq", "1"]
RUNS = {  # name: (launcher, script, options); {out} is the run folder
    "plain": ([], "simclr.py", COMMON + ["--num-epochs", "2", "--test-freq", "1", "--knn-k", "20",
                                         "--filename", "{out}/plain.pth"]),
    "gradcache": ([], "simclr.py", COMMON + ["--num-epochs", "1", "--test-freq", "0", "--chunk-size", "30",
                                             "--filename", "{out}/gradcache.pth"]),
    "gloo": (["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port={port}"], "simclr.py",
             COMMON + ["--num-epochs", "1", "--test-freq", "0", "--filename", "{out}/gloo.pth"]),
    "finetune": ([], "finetune.py", ["--load-from", "{out}/plain.pth", "--label-fraction", "0.2", "--num-epochs", "2",
                                     "--batch-size", "50", "--num-workers", "0", "--precision", "fp32", "--device",
                                     "cpu", "--output", "{out}/finetune.json", "--save-model", "{out}/finetune.pth"]),
}


def run_all(tree: str, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    for name, (launcher, script, options) in RUNS.items():
        if os.path.exists(os.path.join(out, f"{name}.pth")):
            continue  # cached (the base's)
        cmd = [sys.executable, *[o.format(port=free_port()) for o in launcher], script,
               *[o.format(out=out) for o in options]]
        print(f"[{os.path.basename(out)}] {name}", flush=True)
        proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"})
        if proc.returncode:
            sys.exit(f"{name} failed in {tree}:\n{proc.stderr[-3000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def column(path: str, name: str) -> list[str]:
    with open(path, newline="") as f:
        return [row[name] for row in csv.DictReader(f) if row.get(name)]


def compare(base: str, new: str) -> list[str]:
    """The differences between two folders of results, as lines."""
    diffs = []
    for name in RUNS:
        a = torch.load(os.path.join(base, f"{name}.pth"), weights_only=True)["model"]
        b = torch.load(os.path.join(new, f"{name}.pth"), weights_only=True)["model"]
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        print(f"{name}: weights {'identical' if same else 'DIFFER'}")
        diffs += [] if same else [f"{name} weights"]
        log = os.path.join(base, f"{name}.csv")
        for field in ("loss", "knn_top1") if os.path.exists(log) else ():
            x, y = column(log, field), column(os.path.join(new, f"{name}.csv"), field)
            print(f"{name}: {field} {'identical' if x == y else 'DIFFER'} ({len(x)} values)")
            diffs += [] if x == y else [f"{name} {field}"]
    top1 = [column_json(os.path.join(d, "finetune.json")) for d in (base, new)]
    print(f"finetune: top-1 {top1[0]} vs {top1[1]}")
    return diffs + ([] if top1[0] == top1[1] else ["finetune top-1"])


def column_json(path: str):
    with open(path) as f:
        return json.load(f)["top1"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the commit before the refactor")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "same_bits"), help="(default: runs/same_bits)")
    p.add_argument("--tag", default="new", help="this tree's results go to <out>/<tag> (default: new)")
    args = p.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    base_tree, base_out = os.path.join(args.out, f"tree-{commit}"), os.path.join(args.out, f"base-{commit}")
    if not os.path.isdir(base_tree):
        subprocess.run(["git", "worktree", "add", "--detach", base_tree, commit], cwd=ROOT, check=True)
    run_all(base_tree, base_out)
    new_out = os.path.join(args.out, args.tag)
    subprocess.run(["rm", "-rf", new_out], check=True)
    run_all(ROOT, new_out)
    diffs = compare(base_out, new_out)
    print("same bits" if not diffs else f"DIFFERENT: {', '.join(diffs)}")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
