"""An append-only CSV log that a plotting script or pandas can read, tied to its run by a run id column."""
from __future__ import annotations

import csv
import io
import os

from utils.errors import UserError
from utils.files import save_text


class CSVLog:
    def __init__(self, path: str, fields: list[str], run_id: str, keep_until_step: int | None = None) -> None:
        """Open ``path`` for appending rows of ``fields`` (the last: ``run_id``, filled in here). When resuming
        (``keep_until_step`` given) the rows of this run up to that step are kept (those logged after the
        checkpoint are dropped, so the log matches the run exactly), and a log of another run is refused before
        it is touched; otherwise the log starts empty. The kept rows are written back atomically."""
        self.path, self.fields, self.run_id = path, fields, run_id
        rows = []
        if keep_until_step is not None and os.path.isfile(path):
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                rows = [r for r in reader if r.get(reader.fieldnames[-1]) is not None]  # not a half-written line
            others = {r.get("run_id") for r in rows} - {run_id, None, ""}
            if others:
                raise UserError(f"log {path} belongs to another run (run id {sorted(others)[0]}, the checkpoint's is "
                                f"{run_id}): move it away, or resume into another --filename")
            rows = [r for r in rows if r.get("step") and int(r["step"]) <= keep_until_step]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({**r, "run_id": run_id} for r in rows)
        save_text(path, text.getvalue())
        self.file = open(path, "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.fields, extrasaction="ignore", lineterminator="\n")

    def write(self, **row) -> None:
        try:
            self.writer.writerow({**{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()},
                                  "run_id": self.run_id})
            self.file.flush()
        except OSError as e:
            raise UserError(f"cannot append to the log {self.path} ({e.strerror or e}): free some space") from None

    def close(self) -> None:
        self.file.close()


class NullLog:
    """The log of the ranks other than 0: writes nothing."""

    def write(self, **row) -> None:
        pass

    def close(self) -> None:
        pass
