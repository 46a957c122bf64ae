"""Does it learn? A fixed-budget SimCLR pretraining, then L-BFGS linear evaluation of the pretrained
backbone and of the same backbone at random initialisation, side by side.

    python bench/learning.py                      # CPU: ResNet-18, CIFAR-10 (JPEG copy), 1 epoch,
                                                  # about an hour on 2 cores
    python bench/learning.py --epochs 100 --batch-size 512 --device cuda   # the official CIFAR-10 recipe on a GPU
    python bench/learning.py --epochs 2 --out-dir runs/t02 -- --temperature 0.2   # other simclr.py options
    python bench/learning.py --no-random-init ...  # a search: the random-init baseline is the same for every try

Re-running with more --epochs resumes the same run (the schedule follows the new total), so a GPU
session can extend it command by command. Prints both linear accuracies and their difference, writes
them to <out-dir>/summary.json and appends a row to <out-dir>/history.csv (accuracy versus epochs);
the training log (<out-dir>/pretrain.csv) can be drawn with scripts/plot.py.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data.paths import DEFAULT_PATHS_FILE  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.files import save_json  # noqa: E402


def script(name: str, argv: list[str]) -> None:
    """Run one of the repository's scripts as a user would, its output passed through."""
    if subprocess.run([sys.executable, os.path.join(ROOT, name)] + argv).returncode:
        raise UserError(f"{name} failed (see its message above)")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Fixed-budget pretraining + linear evaluation vs random init")
    p.add_argument("--dataset", default="cifar10", help="(default: cifar10)")
    p.add_argument("--dataset-paths", default=DEFAULT_PATHS_FILE,
                   help="JSON file mapping dataset names to folders (default: the repository's dataset-paths.json)")
    p.add_argument("--arch", default="resnet18", help="(default: resnet18)")
    p.add_argument("--epochs", type=int, default=1, help="total pretraining epochs (default: 1)")
    p.add_argument("--batch-size", type=int, default=128, help="(default: 128)")
    p.add_argument("--base-lr", type=float, default=None, help="(default: simclr.py's recipe)")
    p.add_argument("--warmup-epochs", type=float, default=None,
                   help="(default: 10 when --epochs >= 100, else 10%% of the epochs)")
    p.add_argument("--test-freq", type=int, default=0, help="kNN monitor every N epochs, 0: never (default: 0)")
    p.add_argument("--num-workers", type=int, default=2, help="(default: 2)")
    p.add_argument("--device", default="auto", help="(default: auto)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument("--out-dir", default="runs/learning", help="(default: runs/learning)")
    p.add_argument("--no-random-init", action="store_true",
                   help="skip the random-init evaluation: it depends only on dataset, arch and seed, so one run "
                        "of a search measures it for all")
    p.add_argument("simclr_args", nargs=argparse.REMAINDER,
                   help="after --: more simclr.py options, e.g. -- --temperature 0.2 (the rest: its defaults)")
    return p


def main(args: argparse.Namespace) -> dict:
    os.makedirs(args.out_dir, exist_ok=True)
    ckpt = os.path.join(args.out_dir, "pretrain.pth")
    warmup = args.warmup_epochs if args.warmup_epochs is not None else (10 if args.epochs >= 100 else 0.1 * args.epochs)
    pre_args = ["--dataset", args.dataset, "--dataset-paths", args.dataset_paths, "--arch", args.arch,
                "--batch-size", str(args.batch_size), "--num-epochs", str(args.epochs),
                "--warmup-epochs", str(warmup), "--test-freq", str(args.test_freq),
                "--num-workers", str(args.num_workers), "--device", args.device, "--seed", str(args.seed),
                "--filename", ckpt] + (["--base-lr", str(args.base_lr)] if args.base_lr is not None else [])
    pre_args += [a for a in args.simclr_args if a != "--"]
    if os.path.isfile(ckpt):  # a longer run continues this one; what changes with it is recorded in the checkpoint
        pre_args += ["--resume", "--allow-changes"]
    t0 = time.time()
    script("simclr.py", pre_args)
    pretrain_s = time.time() - t0
    with open(os.path.join(args.out_dir, "pretrain.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    knn = [float(row["knn_top1"]) for row in rows if row["knn_top1"]]
    speeds = sorted(float(row["images_per_s"]) for row in rows if row["images_per_s"])
    images_per_s = speeds[len(speeds) // 2] if speeds else None  # median over the logged steps
    results = {}
    evaluations = [("pretrained", [])] + ([] if args.no_random_init else [("random_init", ["--random-init"])])
    for name, extra in evaluations:
        t, output = time.time(), os.path.join(args.out_dir, f"lbfgs-{name}.json")
        script("lbfgs_linear_clf.py", ["--load-from", ckpt, "--dataset-paths", args.dataset_paths, "--num-workers",
                                       str(args.num_workers), "--seed", str(args.seed), "--device", args.device,
                                       "--output", output, "--overwrite"] + extra)
        with open(output) as f:
            summary = json.load(f)
        results[name] = {"test_acc": summary["test_acc"], "best_l2": summary["best_l2"], "seconds": time.time() - t}
    out = {"dataset": args.dataset, "arch": args.arch, "epochs": args.epochs, "batch_size": args.batch_size,
           "seed": args.seed, "simclr_args": pre_args, "pretrain_seconds_this_command": pretrain_s,
           "images_per_s": images_per_s, "knn_top1": knn, **results}
    baseline = results.get("random_init", {}).get("test_acc")
    if baseline is not None:
        out["difference"] = results["pretrained"]["test_acc"] - baseline
    save_json(os.path.join(args.out_dir, "summary.json"), out)
    history = os.path.join(args.out_dir, "history.csv")  # linear accuracy versus epochs, one row per command
    new = not os.path.isfile(history)
    with open(history, "a") as f:
        if new:
            f.write("epochs,batch_size,pretrained_acc,random_init_acc,difference\n")
        f.write(f"{args.epochs},{args.batch_size},{out['pretrained']['test_acc']:.2f},"
                + (f"{baseline:.2f},{out['difference']:.2f}\n" if baseline is not None else ",\n"))
    versus = f" vs random init {baseline:.2f}%: {out['difference']:+.2f} points" if baseline is not None else ""
    print(f"\nlinear (L-BFGS) test accuracy on {args.dataset}: pretrained {out['pretrained']['test_acc']:.2f}%{versus} "
          f"({args.arch}, {args.epochs} epochs, batch {args.batch_size}, seed {args.seed}; "
          f"pretraining took {pretrain_s / 60:.1f} min in this command"
          + (f", {images_per_s:.1f} images/s" if images_per_s else "") + ")")
    return out


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
