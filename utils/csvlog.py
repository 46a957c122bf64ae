"""An append-only CSV log that a plotting script or pandas can read."""
from __future__ import annotations

import csv
import os


class CSVLog:
    def __init__(self, path: str, fields: list[str], keep_until_step: int | None = None) -> None:
        """Open ``path`` for appending. When resuming, rows with ``step > keep_until_step`` (logged after the
        checkpoint being resumed) are dropped, so the log matches the run exactly."""
        self.path, self.fields = path, fields
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        rows = []
        if keep_until_step is not None and os.path.isfile(path):
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= keep_until_step]
        self.file = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=fields, extrasaction="ignore")
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.file.flush()

    def write(self, **row) -> None:
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class NullLog:
    """The log of the ranks other than 0: writes nothing."""

    def write(self, **row) -> None:
        pass

    def close(self) -> None:
        pass
