"""What the frozen configurations of the scripts share (training/config.py for simclr.py, evaluation/config.py for
the evaluation scripts): the defaults of a configuration class, what was given checked against them, the options
as a checkpoint stores them, and where each value came from for the startup line."""
from __future__ import annotations

from dataclasses import asdict, fields


class Options:
    """Mixin of a frozen dataclass with a ``sources`` field (option -> where its value came from)."""

    def as_dict(self) -> dict:
        """The options and derived values, as checkpoints store them (``args``)."""
        return {k: v for k, v in asdict(self).items() if k != "sources"}

    def origin(self, keys: tuple[str, ...] | None = None) -> str:
        """Where the values that are not the defaults came from, for the startup line: ``given: a=1, b=2; from
        the checkpoint: dataset=cifar10``; with ``keys`` only those of them not given (filled later)."""
        by: dict[str, list[str]] = {}
        for k, source in self.sources.items():
            if keys is None or (k in keys and source != "given"):
                by.setdefault(source, []).append(f"{k}={getattr(self, k)}")
        return "; ".join(f"{source}: {', '.join(items)}" for source, items in by.items())


def defaults_of(kind: type) -> dict:
    """option -> default of a configuration class."""
    return {f.name: f.default for f in fields(kind) if f.name != "sources"}


def check_known(kind: type, given: dict) -> None:
    """A TypeError naming the options of ``given`` that ``kind`` does not have (a script's bug, not a user's)."""
    unknown = set(given) - set(defaults_of(kind))
    if unknown:
        raise TypeError(f"unknown options of {kind.__name__}: {sorted(unknown)}")
