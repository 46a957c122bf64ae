"""Plot a simclr.py training log: loss and learning rate per step, kNN accuracy per epoch, to a PNG.

    python scripts/plot.py checkpoint/output.csv            # writes checkpoint/output.png
    python scripts/plot.py run.csv --output curves.png

Needs matplotlib (an optional dependency: pip install matplotlib).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.errors import UserError, run_cli  # noqa: E402


def read_log(path: str) -> dict[str, list[tuple[float, float]]]:
    """Series from the log: (step, loss), (step, lr) for every logged step, (epoch, kNN top-1) where measured."""
    if not os.path.isfile(path):
        raise UserError(f"log {path} not found: simclr.py writes it beside the checkpoint (<checkpoint>.csv)")
    loss, lr, knn = [], [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("loss"):
                loss.append((int(row["step"]), float(row["loss"])))
                lr.append((int(row["step"]), float(row["lr"])))
            if row.get("knn_top1"):
                knn.append((int(row["epoch"]), float(row["knn_top1"])))
    if not loss:
        raise UserError(f"{path} has no loss rows: is it a simclr.py log?")
    return {"loss": loss, "lr": lr, "knn": knn}


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` values."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot(series: dict, output: str, title: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("matplotlib is not installed: pip install matplotlib") from None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    steps, loss = zip(*series["loss"])
    axes[0].plot(steps, loss, alpha=0.3, label="logged")
    axes[0].plot(steps, moving_average(list(loss), max(1, len(loss) // 20)), label="moving average")
    axes[0].set(xlabel="step", ylabel="NT-Xent loss")
    axes[0].legend()
    axes[1].plot(*zip(*series["lr"]))
    axes[1].set(xlabel="step", ylabel="learning rate")
    if series["knn"]:
        axes[2].plot(*zip(*series["knn"]), marker="o")
    else:
        axes[2].text(0.5, 0.5, "not measured (--test-freq 0)", ha="center", va="center", transform=axes[2].transAxes)
    axes[2].set(xlabel="epoch", ylabel="kNN top-1 (%)")
    for ax in axes:
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
