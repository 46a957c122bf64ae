"""Plot a simclr.py training log: loss, learning rate and kNN accuracy per epoch, to a PNG.

    python scripts/plot.py checkpoint/output.csv            # writes checkpoint/output.png
    python scripts/plot.py run.csv --output curves.png

Needs matplotlib (an optional dependency: pip install matplotlib).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.errors import UserError, run_cli  # noqa: E402


def read_log(path: str) -> dict[str, list[tuple[float, float]]]:
    """Per-epoch series from the step log: mean loss, last lr, and kNN top-1 where measured."""
    if not os.path.isfile(path):
        raise UserError(f"log {path} not found: simclr.py writes it beside the checkpoint (<checkpoint>.csv)")
    losses, lrs, knn = defaultdict(list), {}, []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            epoch = int(row["epoch"])
            if row.get("loss"):
                losses[epoch].append(float(row["loss"]))
                lrs[epoch] = float(row["lr"])
            if row.get("knn_top1"):
                knn.append((epoch, float(row["knn_top1"])))
    if not losses:
        raise UserError(f"{path} has no loss rows: is it a simclr.py log?")
    return {"loss": [(e, sum(v) / len(v)) for e, v in sorted(losses.items())],
            "lr": sorted(lrs.items()), "knn": knn}


def plot(series: dict, output: str, title: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("matplotlib is not installed: pip install matplotlib") from None
    panels = [("loss", "NT-Xent loss"), ("lr", "learning rate (end of epoch)"), ("knn", "kNN top-1 (%)")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (key, label) in zip(axes, panels):
        if series[key]:
            x, y = zip(*series[key])
            ax.plot(x, y, marker="o" if len(x) < 30 else None)
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    print(f"wrote {output}")


def main(args: argparse.Namespace) -> None:
    output = args.output or os.path.splitext(args.log)[0] + ".png"
    plot(read_log(args.log), output, args.title or os.path.basename(args.log))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Plot loss, lr and kNN accuracy of a simclr.py log")
    p.add_argument("log", help="the CSV log written beside the checkpoint")
    p.add_argument("--output", default=None, help="PNG file (default: the log's name with .png)")
    p.add_argument("--title", default=None, help="figure title (default: the log's file name)")
    return p


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
