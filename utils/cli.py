"""The scripts' argument parser: numbers checked at parse time, every error one ``error:`` line with exit 2."""
from __future__ import annotations

import argparse
import math
import sys


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): ``error: argument --x: ... (see --help)``, exit 2."""

    def error(self, message: str):
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def number(kind: type = int, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False):
    """An argparse ``type``: ``kind`` (int or float, finite) within [low, high] (an end open where asked)."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    if low is not None and high is not None:
        wanted = f"in {left}{low:g}, {high:g}{right}"
    elif low is not None:
        wanted = f"{'>' if low_open else '>='} {low:g}"
    else:
        wanted = f"{'<' if high_open else '<='} {high:g}"
    name = "an integer" if kind is int else "a number"

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name} {wanted}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number {wanted}, got {text!r}")
        if ((low is not None and (value <= low if low_open else value < low))
                or (high is not None and (value >= high if high_open else value > high))):
            raise argparse.ArgumentTypeError(f"expected {name} {wanted}, got {text}")
        return value

    convert.__name__ = f"{kind.__name__} {wanted}"
    return convert


positive_int = number(int, 1)
nonneg_int = number(int, 0)
positive_float = number(float, 0, low_open=True)
nonneg_float = number(float, 0)
open_fraction = number(float, 0, 1, low_open=True, high_open=True)  # (0, 1)
